"""What the sweep's plots show (sweeps/plots.py), on synthetic sweeps: every varying setting told apart, titles
from what is common, error bars that stay within the repeats, named percentiles, legible answer figures."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
from matplotlib.container import ErrorbarContainer  # noqa: E402

from client.latency import LatencyStats  # noqa: E402
from sweeps import plots  # noqa: E402
from sweeps.records import Configuration, SweepRecord, configurations, mean_and_spread, sweep_title  # noqa: E402
from sweeps.report import Objective, summary_markdown  # noqa: E402
from tests.client.test_results import _result  # noqa: E402
from tests.support import peak_record  # noqa: E402

ENV = {"host": "vm", "device": "cpu", "cpu": "AMD EPYC", "git_commit": "abc"}


def _record(throughputs: list[float], **config) -> SweepRecord:
    config = {"batch_size": 1, "compile": False, "concurrency": 1, "num_workers": 1, "image_size": 64,
              "device": "cpu", "model": "resnet18", "num_iters": 20, "duration_s": None, **config}
    runs = []
    for seed, throughput in enumerate(throughputs, 1):
        r = _result(seed, n=100 + 10 * seed)
        r.batch_size, r.throughput = config["batch_size"], throughput
        runs.append({"repeat": seed, "spawn_to_ready_s": 1.0, "result": r.to_dict()})
    return SweepRecord.from_dict({"key": repr(sorted(config.items())), "label": repr(config), "config": config,
                                  "runs": runs, "status": "ok"})


@pytest.fixture
def two_models() -> list[SweepRecord]:
    """The issue's repro: --axis model=resnet18,mobilenet_v3_small --batch-sizes 1,4."""
    return [_record([100.0 * batch, 90.0 * batch], model=model, batch_size=batch)
            for model, batch in itertools.product(("resnet18", "mobilenet_v3_small"), (1, 4))]


def _bars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_every_plot_tells_apart_every_setting_that_varies_and_titles_only_what_is_common(two_models) -> None:
    title = sweep_title(two_models, "vm")
    assert "resnet18" not in title and "mobilenet" not in title and "64x64 px" in title
    assert "resnet18" not in summary_markdown(two_models, "s", ENV).splitlines()[0]
    fig = plots.throughput_latency_figure(two_models, title)
    tp = _bars(fig.axes[0])
    assert [b.get_label() for b in tp] == ["model=resnet18", "model=mobilenet_v3_small"]
    assert len({b.lines[0].get_color() for b in tp}) == 2
    (ax,) = plots.percentile_figure(two_models, title).axes
    labels = [line.get_label().split(" (")[0] for line in ax.get_lines()]
    assert labels == ["batch_size=1 model=resnet18", "batch_size=4 model=resnet18",
                      "batch_size=1 model=mobilenet_v3_small", "batch_size=4 model=mobilenet_v3_small"]
    assert len({line.get_color() for line in ax.get_lines()}) == 4
    # A server setting that varies (dynamic batching) is told apart the same way, in every answer figure.
    batching = [peak_record(m, [30.0 + int(m), 32.0], [0.2, 0.21]) for m in ("0", "8")]
    for fig in (plots.pareto_figure(configurations(batching), Objective("peak", 250.0)),
                plots.curves_figure(configurations(batching), None, Objective("peak", 250.0))):
        shown = {h.get_label() for a in fig.axes for h in a.get_legend_handles_labels()[0]}
        assert {"max_batch_size=0", "max_batch_size=8"} <= shown


def test_error_bars_span_the_repeats_5th_to_95th_percentile_never_below_zero() -> None:
    mean, below, above = mean_and_spread([10.0, 10.0, 200.0])
    assert mean == pytest.approx(73.333, abs=1e-3)
    assert mean - below == pytest.approx(10.0) and mean + above == pytest.approx(181.0)  # lopsided, as the repeats
    # One standard deviation each way would reach -36.4 samples/s here; the bar stops at the slowest repeat.
    fig = plots.throughput_latency_figure([_record([10.0, 10.0, 200.0])], "t")
    (bars,) = _bars(fig.axes[0])
    ((_, low), (_, high)), = bars.lines[2][0].get_segments()
    assert low == pytest.approx(10.0) and high == pytest.approx(181.0)
    for ax in fig.axes:  # latency bars too: never below zero
        assert all(seg[0][1] >= 0 for b in _bars(ax) for seg in b.lines[2][0].get_segments())


def _stats(ms: list[float]) -> LatencyStats:
    stats = LatencyStats()
    for value in ms:
        stats.record(int(value * 1e6))
    return stats


def test_the_cdf_names_its_percentiles_reaches_p99_and_steps_at_the_right_values(two_models) -> None:
    (ax,) = plots.percentile_figure(two_models, "t").axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[:3] == ["p50", "p90", "p99"]  # 110-130 requests a line: still p99 on the axis
    assert ax.get_xlim()[1] >= 100.0
    values = [1.0, 2.0, 3.0, 4.0]
    xs, ys = plots.cdf_steps(_stats(values), right=100.0)
    for p in (10.0, 30.0, 60.0, 80.0, 99.0):  # drawn at p: the smallest value at least p% of requests took
        drawn = ys[max(i for i, x in enumerate(xs) if x <= 1 / (1 - p / 100))]
        assert drawn == pytest.approx(np.percentile(values, p, method="inverted_cdf"), rel=0.01)
    assert xs[-1] == 100.0 and ys[-1] == pytest.approx(4.0, rel=0.01)  # the max, to the right edge


def test_the_cdf_per_repeat_draws_each_repeat_thin_in_its_configurations_colour(two_models) -> None:
    (ax,) = plots.percentile_figure(two_models, "t", per_repeat=True).axes
    lines = ax.get_lines()
    assert len(lines) == 4 + 8  # four configurations merged, and their two repeats each
    merged, repeats = lines[0], lines[4:6]  # the merged curves, then each repeat's (drawn behind them)
    assert all(r.get_color() == merged.get_color() and r.get_linewidth() < merged.get_linewidth() for r in repeats)
    assert all(r.get_zorder() < merged.get_zorder() and not r.get_label().startswith("batch") for r in repeats)
    assert "thin: each repeat" in ax.get_title()


def test_pareto_is_legible_and_its_front_shows_in_the_legend_with_one_point(tmp_path: Path) -> None:
    from PIL import Image

    stats = [Configuration(f"c{i}", {"max_batch_size": i}, [{"throughput": t, "p99_latency": 0.01 * (i + 1)}
                                                            for t in (100.0, 110.0)]) for i in range(3)]
    stats[0].repeats = [{"throughput": 200.0, "p99_latency": 0.005}] * 2  # dominates: the front is one point
    fig = plots.pareto_figure(stats, Objective("fixed", 25.0))
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 9
    handles, labels = ax.get_legend_handles_labels()
    front = handles[labels.index("Pareto front")]
    assert front.get_marker() not in (None, "None", "") and len(front.get_xdata()) == 1
    assert "objective p99 <= 25 ms" in labels
    path = plots.save(fig, tmp_path / "pareto.png", plots.ANSWER_DPI)
    width, height = Image.open(path).size
    assert width >= 900 and height >= 600


def test_peak_curves_sort_probes_by_rate_name_the_percentile_and_the_objective() -> None:
    records = [peak_record("0", [30.0, 32.0], [0.20, 0.21])]
    for run in records[0].runs:  # in search order: the first probe is above the peak, the next below
        assert [p["rate"] for p in run.peak["probes"]] != sorted(p["rate"] for p in run.peak["probes"])
    fig = plots.curves_figure(configurations(records), None, Objective("peak", 250.0, 90.0, 0.95))
    ax_tp, ax_lat, ax_tl = fig.axes
    for line in (*ax_tp.get_lines(), *ax_lat.get_lines()):
        xs = [x for x in line.get_xdata() if np.isfinite(x)]
        assert xs == sorted(xs)  # no zigzag
    assert ax_lat.get_title().startswith("p90 latency at each probe") and "searched" not in ax_lat.get_title()
    assert ax_lat.get_ylabel() == "p90 latency (ms)"
    assert "objective p90 <= 250 ms at confidence 0.95" in ax_lat.get_legend_handles_labels()[1]


def test_a_concurrency_axis_has_whole_number_ticks() -> None:
    stats = [Configuration(f"c{c}", {"concurrency": c}, [{"throughput": 10.0 * c, "p99_latency": 0.01 * c}] * 2)
             for c in (1, 2, 3)]
    fig = plots.curves_figure(stats, "concurrency", Objective("fixed"))
    for ax in fig.axes[:2]:
        fig.canvas.draw()
        assert all(float(t).is_integer() for t in ax.get_xticks())
