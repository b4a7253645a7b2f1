"""Headless Chromium (Debian's `chromium` package) for pages the tests render: a screenshot
to keep, the DOM as the browser built it, and what the page wrote to its console."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # ignored by git
# Chromium's own log lines are noise here (no D-Bus, no GPU in a container); a page's
# console messages arrive as "CONSOLE(line)" or "CONSOLE:" lines with --enable-logging.
CONSOLE = ("CONSOLE(", ":CONSOLE]", "CONSOLE:")


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]
    screenshot: Path | None


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return found


def render(page: Path, screenshot: Path | None, *, size: str = "1280,1400") -> Rendered:
    """Screenshot ``page`` (unless None) and read its DOM, offline: nothing but the file is
    loaded."""
    binary = chromium()
    common = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
              f"--window-size={size}"]
    url = page.resolve().as_uri()
    logged = ""
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = subprocess.run([*common, f"--screenshot={screenshot}", url],
                              capture_output=True, text=True, timeout=120, check=False)
        assert screenshot.exists() and screenshot.stat().st_size > 0, shot.stderr[-2000:]
        logged = shot.stderr
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=False)
    console = [line for line in (logged + dom.stderr).splitlines()
               if any(mark in line for mark in CONSOLE)]
    return Rendered(dom.stdout, console, screenshot)
