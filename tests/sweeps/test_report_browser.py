"""report.html in a real browser: headless Chromium (Debian's `chromium`) renders the committed peak sweep's page.

What is checked, and how:
- the screenshot is not blank: not one colour, and the plots' own colours (matplotlib's tab:blue and
  tab:orange, which nothing else on the page uses) cover many pixels, so the embedded PNGs decoded and drew;
- no console message: with --enable-logging=stderr Chromium logs every console message (errors, uncaught
  exceptions, Content-Security-Policy refusals) as an "INFO:CONSOLE" line; the page has no script, so any
  such line is a fault;
- no fetch on the page's behalf: --log-net-log records every URL request with its network isolation key, and
  the page's own requests carry the file:// page's key (Chromium's background requests carry another).
A control page with an uncaught error and an external image shows that both detectors see faults, so a pass
is not a detector gone blind. --host-resolver-rules keeps Chromium's own background requests off the network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sweeps import rerender
from sweeps.html_report import REPORT_NAME
from tests.sweeps.test_html_report import peak_sample

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMIUM_TIMEOUT_S = 120
WINDOW = (1280, 2400)  # the answer, the Pareto plot and the curves
PLOT_COLOURS = {"tab:blue": (31, 119, 180), "tab:orange": (255, 127, 14)}


@dataclass
class Rendered:
    pixels: np.ndarray  # the screenshot, height x width x RGB
    console: list[str]  # every console message Chromium logged
    fetched: list[str]  # URLs requested on the page's behalf


def render(page: Path, work: Path) -> Rendered:
    """Chromium opens `page` from file:// with a fresh profile, takes a screenshot and exits (bounded)."""
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    png, net = work / "screenshot.png", work / "net-log.json"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={work / 'profile'}", "--enable-logging=stderr",
         "--v=0", f"--log-net-log={net}", f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, cwd=work)
    assert proc.returncode == 0 and png.exists(), proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    fetched = set()
    for event in json.loads(net.read_text()).get("events", []):
        params = event.get("params") or {}
        url = str(params.get("url", ""))
        if str(params.get("network_isolation_key", "")).startswith("file://") and url \
                and not url.startswith(("file:", "data:")):
            fetched.add(url)
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    return Rendered(pixels, console, sorted(fetched))


def coloured(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> int:
    """How many pixels are within `tolerance` of `rgb` on every channel."""
    return int((np.abs(pixels.astype(int) - np.array(rgb)) <= tolerance).all(axis=2).sum())


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it when run as root with apt-get)")
    return CHROMIUM


def test_the_detectors_see_a_script_error_and_an_external_fetch(chromium: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><html><body><p>control</p><script>undefined_function();</script>'
                   '<img src="http://127.0.0.1:9/missing.png" alt="x"></body></html>')
    shown = render(bad, tmp_path / "bad")
    assert any("Uncaught ReferenceError" in line for line in shown.console), shown.console
    assert "http://127.0.0.1:9/missing.png" in shown.fetched
    assert all(coloured(shown.pixels, rgb) == 0 for rgb in PLOT_COLOURS.values())


def test_chromium_renders_the_sample_report(chromium: str, tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    shutil.copy(peak_sample(), folder)
    result = CliRunner().invoke(rerender.main, [str(folder)])
    assert result.exit_code == 0, result.output
    shown = render(folder / REPORT_NAME, tmp_path / "browser")
    assert shown.console == []
    assert shown.fetched == []
    assert shown.pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert len(np.unique(shown.pixels.reshape(-1, 3), axis=0)) > 100  # not blank: text, tables, plots
    for name, rgb in PLOT_COLOURS.items():
        assert coloured(shown.pixels, rgb) > 200, f"no {name} pixels: the embedded plots did not draw"
