"""The answer a sweep shows (sweeps/report.py, sweeps/plots.py): the Pareto front, the best configuration, the plots."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from sweeps.plots import curve_groups, plot_curves, plot_pareto
from sweeps.records import Configuration, SweepRecord, configurations
from sweeps.report import (
    MEASURED_HEADER,
    OFFERED_HEADER,
    Objective,
    _figure,
    answer_markdown,
    best_under_slo,
    pareto_front,
    summary_table,
)
from tests.support import peak_record

FIXED = Objective("fixed", 50.0)
PEAK = Objective("peak", 250.0, 99.0, 0.95)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def test_pareto_front_is_exactly_the_non_dominated_points() -> None:
    rng = random.Random(0)
    for _ in range(200):
        # Few distinct values so that ties (equal throughput or equal latency) are common.
        points = [(float(rng.randint(1, 6)), float(rng.randint(1, 6))) for _ in range(rng.randint(1, 12))]
        front = pareto_front(points, lambda p: p[0], lambda p: p[1])
        expected = [p for p in points if not any(_dominates(q, p) for q in points)]
        assert front == expected
        assert not any(_dominates(a, b) for a, b in itertools.permutations(front, 2))


def test_pareto_front_by_hand() -> None:
    configs = {"a": (100, 10), "b": (150, 20), "c": (90, 15), "d": (150, 25), "e": (200, 40), "f": (200, 40)}
    front = pareto_front(list(configs), lambda k: configs[k][0], lambda k: configs[k][1])
    # c: a has more throughput and less latency; d: b has the same throughput, less latency; e and f tie.
    assert front == ["a", "b", "e", "f"]
    assert pareto_front(["x"], lambda k: None, lambda k: 1.0) == []


def _stats(label: str, throughputs: list[float], p99s: list[float], **extra: list[float]) -> Configuration:
    repeats = [{"throughput": t, "p99_latency": p, **{k: v[i] for k, v in extra.items()}}
               for i, (t, p) in enumerate(zip(throughputs, p99s))]
    return Configuration(label, {"label": label}, repeats)


def test_best_under_the_objective_is_the_fastest_that_meets_it() -> None:
    stats = [_stats("slow", [50, 52], [0.010, 0.011]), _stats("fast", [90, 91], [0.030, 0.031]),
             _stats("fastest", [150, 140], [0.080, 0.090])]
    assert best_under_slo(stats, 50.0).label == "fast"
    assert best_under_slo(stats, 5.0) is None
    assert best_under_slo(stats, None).label == "fastest"


def test_peak_sweep_summary_names_the_best_with_its_figures(tmp_path: Path) -> None:
    records = [peak_record("0", [30.0, 32.0], [0.20, 0.21]), peak_record("8", [80.0, 84.0], [0.22, 0.23]),
               SweepRecord("x", "", {}, status="failed", reason="boom")]
    stats = configurations(records)
    assert [s.label for s in stats] == ["0", "8"]
    text = answer_markdown(stats, PEAK)
    assert "Best: **8**: a peak of 82 ± 2.8 requests/s offered" in text
    assert "GPU utilisation 40 ± 0 %" in text and "GPU memory 2000 ± 0 MB" in text
    for png in (plot_pareto(stats, tmp_path / "pareto.png", PEAK), plot_curves(stats, None, tmp_path / "c.png", PEAK)):
        assert png is not None and png.read_bytes().startswith(PNG_MAGIC)


def _cells(text: str, header: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    names = [c.strip() for c in lines[0].strip("|").split("|")]
    return [[c.strip() for c in ln.strip("|").split("|")][names.index(header)] for ln in lines[2:]]


def test_a_peak_answer_names_the_offered_rate_and_the_measured_throughput_and_the_summary_agrees() -> None:
    records = [peak_record("0", [30.0, 32.0], [0.20, 0.21]), peak_record("8", [80.0, 84.0], [0.22, 0.23])]
    text = answer_markdown(configurations(records), PEAK)
    # Offered (the search's answer) and measured (the run at the peak) are both there, each named.
    assert ("Best: **8**: a peak of 82 ± 2.8 requests/s offered (82 ± 2.8 samples/s). A run at that rate measured "
            "73.8 ± 2.5 samples/s answered, p99 225 ± 7.1 ms (at most 281.2 ± 8.8 ms at confidence 0.95)") in text
    assert "confirmed in 2 of 2 repeats" in text
    assert _cells(text, "peak offered (requests/s)") == ["31 ± 1.4", "82 ± 2.8"]
    assert _cells(text, "measured at the peak (samples/s)") == ["27.9 ± 1.3", "73.8 ± 2.5"]
    assert _cells(text, "p99 bound (ms)") == ["256.2 ± 8.8", "281.2 ± 8.8"]
    assert "Offered: the request rate the search found" in text  # the note says what each column is
    # summary.md's throughput is the same measured figure, labelled so, with the offered rate beside it.
    header, rows = summary_table(records, "host")
    measured = [float(r[header.index(MEASURED_HEADER)].split(" ± ")[0]) for r in rows]
    offered = [float(r[header.index(OFFERED_HEADER)].split(" ± ")[0]) for r in rows]
    assert measured == [27.9, 73.8] and offered == [31.0, 82.0]
    assert "throughput (samples/s)" not in header


def test_fixed_load_curves_group_configurations_along_the_axis(tmp_path: Path) -> None:
    stats = []
    for batching, rate in itertools.product((0, 8), (10.0, 20.0, 40.0)):
        s = _stats(f"b{batching} r{rate}", [rate, rate * 1.01], [0.01 * rate, 0.011 * rate])
        s.settings = {"max_batch_size": batching, "request_rate": rate, "model": "resnet18"}
        stats.append(s)
    groups = curve_groups(stats, "request_rate")
    assert list(groups) == ["max_batch_size=0", "max_batch_size=8"]
    assert [m.settings["request_rate"] for m in groups["max_batch_size=8"]] == [10.0, 20.0, 40.0]
    png = plot_curves(stats, "request_rate", tmp_path / "curves.png", Objective("fixed", 300.0))
    assert png is not None and png.read_bytes().startswith(PNG_MAGIC)
    assert plot_curves(stats, None, tmp_path / "none.png", FIXED) is None  # no rate or concurrency axis, no peaks


def test_nothing_met_is_said_not_guessed() -> None:
    # Fixed load: the only configuration's p99 is over the objective. Peak mode: a search found no rate.
    assert "No configuration met the objective" in answer_markdown([_stats("a", [10.0], [1.0])], Objective("fixed", 5.0))
    no_peak = Configuration("b", {}, [{"peak_rate": None, "throughput": None, "p99_latency": None}])
    assert "No configuration met the objective" in answer_markdown([no_peak], Objective("peak", 5.0))


def test_answer_figures_read_as_plain_numbers() -> None:
    # 12,000 samples/s on a GPU read 1.2e+04 and a 470 ms spread 4.7e+02 with %g; four and two digits, plainly.
    text = answer_markdown([_stats("gpu", [12000.0, 12500.0], [0.1, 0.8])], Objective("fixed"))
    assert "12250 ± 350 samples/s, p99 450 ± 490 ms" in text and "e+" not in text


def test_samples_per_joule_is_a_second_pareto_axis_when_the_gpu_reports_energy() -> None:
    # "frugal" serves fewer samples/s but more per joule; "wasteful" is beaten on both by "frugal" in energy.
    stats = [_stats("fast", [200, 200], [0.020, 0.020], samples_per_joule=[40.0, 42.0], gpu_throttled=[True, False]),
             _stats("frugal", [120, 120], [0.015, 0.015], samples_per_joule=[90.0, 92.0],
                    gpu_throttled=[False, False]),
             _stats("wasteful", [100, 100], [0.030, 0.030], samples_per_joule=[30.0, 30.0],
                    gpu_throttled=[False, False])]
    text = answer_markdown(stats, Objective("fixed"))
    assert "Most samples per joule above the GPU's idle power: **frugal**, 91 ± 1.4 samples/J" in text
    header = next(line for line in text.splitlines() if line.startswith("| configuration"))
    assert "samples/J above idle | GPU throttled (repeats) | Pareto (samples/J)" in header
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["fast"].endswith("| 41 ± 1.4 | 1 of 2 |  | 2 | yes |")
    assert rows["frugal"].endswith("| 91 ± 1.4 | 0 of 2 | yes | 2 | yes |")
    assert rows["wasteful"].endswith("| 30 ± 0 | 0 of 2 |  | 2 |  |")
    # Without energy figures (no GPU), the answer is as it was: no energy columns, no energy line.
    plain = answer_markdown([_stats("a", [100], [0.01])], Objective("fixed"))
    assert "samples/J" not in plain


def test_a_bound_one_repeat_could_not_show_reads_inf_without_a_spread() -> None:
    # A repeat whose confirmation stayed undecided has no upper confidence bound (inf); the mean and std
    # once raised inside statistics.stdev and lost the sweep's answer, plots and page.
    s = _stats("a", [60.0, 62.0], [0.2, 0.25], peak_latency_high=[0.05, float("inf")])
    assert _figure(s, "peak_latency_high", 1e3) == "inf" and _figure(s, "p99_latency", 1e3) == "225 ± 35"
