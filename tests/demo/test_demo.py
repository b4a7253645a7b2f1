"""The README's first command: `changegate demo` runs the whole story and asserts its verdicts."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_plays_every_step_with_the_expected_verdict():
    result = subprocess.run([sys.executable, "-m", "changegate", "demo"], capture_output=True,
                            text=True, timeout=180, env={**os.environ, "NO_COLOR": "1"})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "UNEXPECTED" not in out
    # The verdicts a person reads, in order.
    for needle in ("reason: no_approval", "reason: approvals_insufficient",
                   "reason: self_approval", "reason: signature_invalid",
                   "admitted (allowed:approved)",
                   "reason: approval_used", "reason: change_record_invalid",
                   "Warning: changegate: would DENY:", "BREAK-GLASS by dana",
                   "changegate_break_glass_total", "All 13 steps got the expected verdict"):
        assert needle in out, needle
    assert out.index("reason: no_approval") < out.index("admitted (allowed:approved)")


def test_demo_fails_loudly_when_the_server_cannot_start(tmp_path):
    # A non-directory keys dir makes the demo fail before any verdict: one line, non-zero.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = subprocess.run([sys.executable, "-m", "changegate", "demo", "--keys-dir",
                             str(blocker)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
