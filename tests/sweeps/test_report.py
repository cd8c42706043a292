"""sweeps/plots.py and sweeps/report.py on synthetic sweeps: what the plots draw (error bars, colours,
percentiles) and the tables say."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.container import ErrorbarContainer  # noqa: E402

from sweeps import plots, report  # noqa: E402
from sweeps.records import SweepRecord, sweep_title  # noqa: E402
from tests.client.test_results import _result  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(batch: int, workers: int, seeds: tuple[int, ...]) -> SweepRecord:
    runs = []
    for seed in seeds:
        r = _result(seed, n=200 + 50 * seed)
        r.batch_size = batch
        r.servers = [{**r.servers[0], "hostname": "gpu-box", "device_name": "NVIDIA H200", "device": "cuda:0"}]
        runs.append({"repeat": seed, "spawn_to_ready_s": 1.0, "result": r.to_dict()})
    config = {"batch_size": batch, "compile": False, "concurrency": 1, "num_workers": workers, "image_size": 64,
              "device": "cuda:0", "model": "resnet18", "num_iters": 20, "duration_s": None}
    return SweepRecord.from_dict({"key": f"{batch}-{workers}", "config": config, "runs": runs, "status": "ok"})


@pytest.fixture
def records() -> list[SweepRecord]:
    return [_record(b, w, (1, 2, 3)) for w in (1, 2) for b in (1, 8)]


def test_throughput_and_latency_have_error_bars_and_one_colour_per_configuration(records) -> None:
    fig = plots.throughput_latency_figure(records, sweep_title(records, "client-host"))
    ax_tp, ax_lat = fig.axes
    tp_bars = [c for c in ax_tp.containers if isinstance(c, ErrorbarContainer)]
    lat_bars = [c for c in ax_lat.containers if isinstance(c, ErrorbarContainer)]
    assert len(tp_bars) == 2 and len(lat_bars) == 4  # two configurations; mean and p99 for each
    for bars in (*tp_bars, *lat_bars):
        line, _, (vertical,) = bars.lines
        assert len(line.get_xdata()) == 2 and len(vertical.get_segments()) == 2  # one bar per batch size
    # The repeats differ, so the bars have a length.
    assert any(seg[1][1] > seg[0][1] for bars in tp_bars for seg in bars.lines[2][0].get_segments())
    tp_colours = [bars.lines[0].get_color() for bars in tp_bars]
    lat_colours = [bars.lines[0].get_color() for bars in lat_bars]
    assert len(set(tp_colours)) == 2 and lat_colours == [tp_colours[0]] * 2 + [tp_colours[1]] * 2
    assert [b.get_label() for b in tp_bars] == ["num_workers=1", "num_workers=2"]  # the setting that varies
    title = fig._suptitle.get_text()
    assert "resnet18 on NVIDIA H200 (cuda:0), 64x64 px, host gpu-box" in title


def test_percentile_plot_merges_every_repeat_on_a_log_tail_axis(records) -> None:
    fig = plots.percentile_figure(records, "t")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["p50", "p90", "p99"]
    lines = ax.get_lines()
    assert len(lines) == 4  # one per configuration
    merged = records[0].merged_latency()
    assert merged.count == sum(run.result["latency"]["count"] for run in records[0].runs)
    assert f"({merged.count} requests, 3 repeats)" in lines[0].get_label()
    assert len({line.get_color() for line in lines}) == 4  # a colour of its own each


def test_plots_are_written_at_a_readable_resolution(records, tmp_path: Path) -> None:
    from PIL import Image

    paths = plots.plot(records, tmp_path, "client-host")
    assert [p.name for p in paths] == ["throughput_latency.png", "latency_cdf.png"]
    for p in paths:
        assert p.read_bytes().startswith(PNG_MAGIC)
        dpi = Image.open(p).info["dpi"][0]
        assert dpi >= 120


def test_tables_in_ms_with_fixed_decimals_and_a_host_column(records, tmp_path: Path) -> None:
    header, rows = report.summary_table(records, "client-host")
    assert header[4] == "host" and "p99 latency (ms)" in header and not any("(s)" in h for h in header)
    assert all(row[4] == "gpu-box" for row in rows)
    cell = rows[0][header.index("average latency (ms)")]
    mean, std = cell.split(" ± ")
    assert len(mean.split(".")[1]) == len(std.split(".")[1]) == 3 and "e" not in cell
    table = tmp_path / "output_1_off.md"
    table.write_text("# batch size 1, compile off\n\n| sweep | average latency (s) |\n|---|---|\n| old | 0.1 |\n")
    report.append_output_table(table, records[0], "20261201-000000", "client-host")
    report.append_output_table(table, records[0], "20261201-000001", "client-host")
    text = table.read_text()
    assert "| old | 0.1 |" in text and text.count("| sweep | host | model |") == 1  # a new table, then its rows
    assert text.rstrip().splitlines()[-1].startswith("| 20261201-000001 | gpu-box | resnet18 |")


def test_the_summary_has_a_column_for_every_other_setting_that_varies(records) -> None:
    for rec, max_batch in zip(records, (0, 8, 0, 8)):
        rec.config["max_batch_size"] = max_batch
        rec.config["batch_timeout_us"] = 2000  # the same everywhere: no column
    header, rows = report.summary_table(records, "client-host")
    assert header[:6] == ["batch", "compile", "concurrency", "workers", "max_batch_size", "host"]
    assert [row[4] for row in rows] == ["0", "8", "0", "8"] and "batch_timeout_us" not in header
    assert len({tuple(row[:5]) for row in rows}) == len(rows)


def test_tables_gain_energy_columns_and_flag_throttled_repeats_when_the_gpu_reports_them() -> None:
    runs = []
    for seed in (1, 2):
        r = _result(seed, n=200)
        r.gpu = {"util_mean": 50.0, "mem_peak_bytes": 1e9, "energy_power_w": 300.0, "idle_power_w": 100.0,
                 "throttled": seed == 2, "throttle_reasons": ["SwPowerCap"] if seed == 2 else []}
        runs.append({"repeat": seed, "spawn_to_ready_s": 1.0, "result": r.to_dict()})
    config = {"batch_size": 8, "compile": False, "concurrency": 1, "num_workers": 1, "image_size": 64,
              "device": "cuda:0", "model": "resnet18", "num_iters": 20, "duration_s": None}
    record = SweepRecord.from_dict({"key": "k", "config": config, "runs": runs, "status": "ok"})
    header, rows = report.summary_table([record], "host")
    assert header[-4:] == ["samples/J above idle", "GPU power (W)", "repeats", "note"]
    per_joule = [s["throughput"] / 200.0 for s in record.summaries()]
    assert rows[0][-4] == report.mean_std(per_joule, 1.0, 1) and rows[0][-3] == "300 ± 0"
    assert rows[0][-1] == "GPU throttled in 1 of 2 repeats"
    # Records without a GPU's energy keep the columns they had.
    header, _ = report.summary_table([_record(1, 1, (1,))], "host")
    assert "samples/J above idle" not in header
