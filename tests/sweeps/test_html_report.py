"""report.html (sweeps/html_report.py): self-contained, holding what the markdown holds, escaped; its re-render
from a sweep file (sweeps/rerender.py), and infer-compare's --html."""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shlex
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from markupsafe import escape

from client.config import ClientConfig
from common.options import from_json
from server.config import ServerConfig
from sweeps import compare, rerender
from sweeps.html_report import REPORT_NAME, render_sweep
from sweeps.records import configurations, read_json, sweep_records
from sweeps.report import answer_table, best_under_slo

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "docs" / "sample-results"
# Attributes through which a page can make the browser fetch something.
FETCHING = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "cite", "ping"}


def peak_sample() -> Path:
    return sorted((SAMPLES / "peak-cpu-2core").glob("sweep-*.json"))[-1]


class _References(HTMLParser):
    """Everything in a page that could load from elsewhere: fetching attributes not data: or #, elements that
    load (script, link, iframe...), @import and url() in styles."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "link", "iframe", "frame", "object", "embed", "base", "audio", "video", "source"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            value = (value or "").strip()
            if name in FETCHING and value and not value.startswith(("data:", "#")):
                self.found.append(f"<{tag} {name}={value[:80]}>")
            elif re.match(r"(https?:)?//", value):  # any other attribute holding a URL
                self.found.append(f"<{tag} {name}={value[:80]}>")
            if name == "style":
                self._style(value)
            if tag == "img" and name == "src":
                self.images.append(value)

    def handle_data(self, data: str) -> None:
        if self.lasttag == "style":
            self._style(data)

    def _style(self, text: str) -> None:
        if "@import" in text:
            self.found.append("@import")
        self.found += [f"url({u[:80]})" for u in re.findall(r"url\(\s*['\"]?([^'\")]*)", text)
                       if not u.startswith("data:")]


def external_references(page: str) -> list[str]:
    parser = _References()
    parser.feed(page)
    parser.close()
    return parser.found


def embedded_images(page: str) -> list[bytes]:
    parser = _References()
    parser.feed(page)
    return [base64.b64decode(src.split(",", 1)[1]) for src in parser.images if src.startswith("data:image/png;base64,")]


def test_the_reference_check_finds_what_would_be_fetched() -> None:
    page = ('<html><head><link rel="stylesheet" href="https://cdn.example/x.css"><style>@import "x.css";'
            ' body { background: url(http://example.com/b.png) }</style></head><body><img src="http://e/x.png">'
            '<p data-src="https://lazy.example/y.png">text http://not-a-fetch.example</p>'
            '<a href="//example.com/">x</a><img src="data:image/png;base64,AAAA"><a href="#top">t</a></body></html>')
    found = external_references(page)
    assert "<link>" in found and "@import" in found
    assert any("http://example.com/b.png" in f for f in found)
    assert any("http://e/x.png" in f for f in found) and any("//example.com/" in f for f in found)
    assert any("lazy.example" in f for f in found)
    assert not any("data:" in f or "#top" in f or "not-a-fetch" in f for f in found)


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the committed peak sweep, its outputs written again from its JSON (as `python -m sweeps.rerender`)."""
    folder = tmp_path_factory.mktemp("peak-sample")
    shutil.copy(peak_sample(), folder)
    result = CliRunner().invoke(rerender.main, [str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_the_sweep_page_is_self_contained_and_embeds_every_plot(sample_folder: Path) -> None:
    page = (sample_folder / REPORT_NAME).read_text()
    assert external_references(page) == []
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    plots = sorted(p.read_bytes() for p in sample_folder.glob("*.png"))
    assert {"pareto.png", "curves.png"} <= {p.name for p in sample_folder.glob("*.png")}
    assert sorted(embedded_images(page)) == plots


def test_the_sweep_page_holds_the_answer_tables_environment_and_commands(sample_folder: Path) -> None:
    page = (sample_folder / REPORT_NAME).read_text()
    data = read_json(next(sample_folder.glob("sweep-*.json")))
    stats = configurations(sweep_records(data))
    best = best_under_slo(stats, float(data["peak"]["slo_ms"]), data["mode"])
    assert best is not None and f"Best: <strong>{best.label}</strong>" in page
    assert f"(p{data['peak']['percentile']:g} &lt;= {data['peak']['slo_ms']:g} ms)" in page
    answer = (sample_folder / "answer.md").read_text()
    header, rows = answer_table(stats, data["mode"])
    for cell in {c for row in rows for c in row} | set(header):
        assert f">{cell}<" in page, cell  # every cell of the answer's table, as answer.md has it
        assert cell in answer
    assert " ± " in page
    for line in (sample_folder / "summary.md").read_text().splitlines()[4:]:  # the summary table's rows
        for cell in filter(None, (c.strip() for c in line.strip("|").split("|"))):
            assert cell.replace("-", "") == "" or f">{cell}<" in page, cell
    env = data["environment"]
    assert env["git_commit"] in page and env["cpu"] in page and env["torch"] in page
    assert "python " + " ".join(env["command"]) in page
    assert page.count("infer-server --bind") == len(stats) and page.count("infer-client --server") == len(stats)
    assert f"python -m sweeps.rerender {sample_folder}" in page


def test_the_commands_on_the_page_recreate_each_configuration(sample_folder: Path) -> None:
    """from_json reads back what a run recorded: the argv the page shows is the configuration that ran."""
    data = read_json(next(sample_folder.glob("sweep-*.json")))
    for rec in sweep_records(data):
        result = rec.runs[0].result
        recorded = json.loads(result["summary"]["server_config"])
        server = from_json(ServerConfig, recorded)
        again = json.loads(json.dumps(server.to_json()))
        assert {k: again[k] for k in recorded} == recorded  # options added since the sweep take their defaults
        assert ("--max-batch-size" in server.to_argv()) == (rec.config["max_batch_size"] != 0)
        client = json.loads(json.dumps(from_json(ClientConfig, result["config"]).to_dict()))  # JSON has no tuples
        assert {k: client[k] for k in result["config"]} == result["config"]
    custom = ServerConfig(bind=("tcp://127.0.0.1:7000",), model="noop", max_batch_size=4, curve_dir=Path("/k"),
                          warmup_batch_sizes=(1, 8))
    assert from_json(ServerConfig, json.loads(json.dumps(custom.to_json()))) == custom


def test_labels_are_text_never_markup() -> None:
    data = read_json(peak_sample())
    evil = "<img src=http://example.com/x.png onerror=alert(1)>"
    data["configurations"][0]["label"] = evil
    data["configurations"][0]["config"]["model"] = "<script>alert(2)</script>"
    page = render_sweep(data, 250.0, [], Path("folder"))
    assert evil not in page and "<script>" not in page
    assert "&lt;img src=http://example.com/x.png onerror=alert(1)&gt;" in page
    assert external_references(page) == []


def test_a_failed_configuration_and_no_figures_still_make_a_page() -> None:
    data = read_json(peak_sample())
    data["configurations"][1] = {**data["configurations"][1], "status": "failed", "runs": [],
                                 "reason": "RuntimeError: no request rate met p99 <= 250 ms"}
    page = render_sweep(data, 250.0, [], Path("f"))
    assert "RuntimeError: no request rate met p99 &lt;= 250 ms" in page
    assert page.count("infer-server --bind") == 1


def test_rerender_refuses_a_folder_without_a_sweep(tmp_path: Path) -> None:
    result = CliRunner().invoke(rerender.main, [str(tmp_path)])
    assert result.exit_code == 2 and "no sweep-*.json" in result.output


def test_report_only_uses_the_plots_already_there(tmp_path: Path) -> None:
    shutil.copy(peak_sample(), tmp_path)
    (tmp_path / "pareto.png").write_bytes((SAMPLES / "peak-cpu-2core" / "pareto.png").read_bytes())
    result = CliRunner().invoke(rerender.main, ["--report-only", str(next(tmp_path.glob("sweep-*.json")))])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        ["pareto.png", REPORT_NAME, peak_sample().name])
    assert embedded_images((tmp_path / REPORT_NAME).read_text()) == [(tmp_path / "pareto.png").read_bytes()]


@pytest.mark.parametrize("where", [(), ("--where-a", "max_batch_size=0", "--where-b", "max_batch_size=8")])
def test_infer_compare_writes_a_self_contained_page(tmp_path: Path, where: tuple[str, ...]) -> None:
    """Two sweeps, and two configurations of one sweep (as the README compares them)."""
    a, b = (peak_sample(), peak_sample()) if where else sorted(SAMPLES.glob("sweep-2026*.json"))[:2]
    out = tmp_path / "cmp" / "report.html"
    result = CliRunner().invoke(compare.main, [str(a), str(b), *where, "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert external_references(page) == []
    assert len(embedded_images(page)) == 1
    side_a, side_b = (compare.select(compare.load_side(p), where[i * 2 + 1: i * 2 + 2], s)
                      for i, (p, s) in enumerate(((a, "A"), (b, "B"))))
    rows = compare.compare(side_a, side_b)
    assert rows and all(f">{escape(r.pair)}<" in page and f">{r.mean_a:.4g}<" in page for r in rows)
    assert str(escape(result.output.splitlines()[0])) in page  # what it printed, verbatim
    command = ["infer-compare", str(a), str(b), *where, "--min-change", "0.02", "--html", str(out)]
    assert str(escape(shlex.join(command))) in page
    bad = CliRunner().invoke(compare.main, [str(a), str(b), "--html", str(tmp_path)])
    assert bad.exit_code == 2 and "directory" in bad.output


def test_every_template_is_installed_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sweeps"]
    templates = [p.relative_to(ROOT / "sweeps").as_posix() for p in (ROOT / "sweeps" / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, pat) for pat in patterns) for t in templates)
