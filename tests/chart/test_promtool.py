"""The shipped alert rules pass promtool, and each alert fires exactly when it should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .alerts import alerts, rule_groups, write_rules_file

PROMTOOL = shutil.which("promtool")
TESTS = Path(__file__).parent / "promtool"
TEST_FILES = sorted(p.name for p in TESTS.glob("*.test.yaml"))

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def _run(*args, cwd):
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


@needs_promtool
def test_shipped_rules_pass_promtool_check(tmp_path):
    rules = tmp_path / "changegate-rules.yaml"
    write_rules_file(rules)
    code, output = _run("check", "rules", rules.name, cwd=tmp_path)
    assert code == 0, output
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in output


@needs_promtool
@pytest.mark.parametrize("name", TEST_FILES)
def test_promtool_unit_tests(tmp_path, name):
    groups = rule_groups()
    for group in groups:  # promtool compares annotations exactly: see promtool/README.md
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "changegate-rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(TESTS / name, tmp_path / name)
    code, output = _run("test", "rules", name, cwd=tmp_path)
    assert code == 0, output


def test_every_alert_is_tested_firing_and_silent():
    fired, silent = set(), set()
    for name in TEST_FILES:
        for case in yaml.safe_load((TESTS / name).read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert set(alerts()) <= fired, f"never shown firing: {set(alerts()) - fired}"
    assert set(alerts()) <= silent, f"never shown silent: {set(alerts()) - silent}"
