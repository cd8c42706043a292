"""infer-merge given a file that is not an infer-client result: one line saying what it is, exit 2.

In-process (click's runner), on the files a user has at hand: a sweep's JSON (the committed sample), a
--find-peak search, JSON of another shape, and no JSON at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from client.merge import main
from client.peak import PeakResult, PeakSearch, Probe
from tests.client.test_results import _result
from tests.support import ROOT

EXPECTED = "expected an infer-client --json-file result"


def _merge(*paths: Path) -> tuple[int, list[str]]:
    out = CliRunner().invoke(main, [str(p) for p in paths])
    return out.exit_code, out.stderr.splitlines()


def test_a_sweep_json_is_named_as_one(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    _result(1).write_json(result)
    (sweep,) = (ROOT / "docs" / "sample-results" / "models-cpu-2core").glob("sweep-*.json")
    code, err = _merge(result, sweep)
    assert (code, err) == (2, [f"Error: {sweep} is a sweep.py result (infer-compare reads sweeps; infer-merge "
                                f"combines clients that ran at the same time): {EXPECTED}"])


def test_other_files_say_what_they_are(tmp_path: Path) -> None:
    peak = PeakResult(PeakSearch(50.0), 1, 100.0, 4, [Probe(80.0, True, "", 0.04, 80.0, 500, 2, True)])
    files = {"peak.json": json.dumps(peak.to_dict()), "list.json": "[1, 2]", "other.json": '{"a": 1}',
             "text.json": "not json", "damaged.json": json.dumps({**_result(2).to_dict(), "latency": 7})}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    said = {name: _merge(tmp_path / name) for name in files}
    assert said == {
        "peak.json": (2, [f"Error: {tmp_path / 'peak.json'} is an infer-client --find-peak search: {EXPECTED}"]),
        "list.json": (2, [f"Error: {tmp_path / 'list.json'} is a JSON array, not an object: {EXPECTED}"]),
        "other.json": (2, [f"Error: {tmp_path / 'other.json'} is a JSON object without a result's fields "
                           f"(missing config, servers, batch_size, started_unix, ...): {EXPECTED}"]),
        "text.json": (2, [f"Error: {tmp_path / 'text.json'} is not JSON (Expecting value: line 1 column 1 "
                          f"(char 0)): {EXPECTED}"]),
        "damaged.json": said["damaged.json"],
    }
    code, err = said["damaged.json"]
    assert code == 2 and len(err) == 1 and err[0].startswith(f"Error: {tmp_path / 'damaged.json'} is a damaged")
