"""The values reference (README table, schema descriptions) is generated from values.yaml
by charts/changegate/hack/gen_docs.py and cannot drift from it."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import yaml

from .rendering import CHART

GENERATOR = CHART / "hack" / "gen_docs.py"


def _generator(values_text=None, tmp_path=None):
    spec = importlib.util.spec_from_file_location("gen_docs", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if values_text is not None:
        module.VALUES = tmp_path / "values.yaml"
        module.VALUES.write_text(values_text)
    return module


def test_generated_docs_are_up_to_date():
    run = subprocess.run([sys.executable, str(GENERATOR), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_check_notices_a_changed_comment(tmp_path):
    original = (CHART / "values.yaml").read_text()
    changed = original.replace("# Where the image is pulled from.",
                               "# Where the image comes from.", 1)
    assert changed != original
    schema, readme = _generator(changed, tmp_path).generate()
    assert "Where the image comes from." in readme
    assert json.loads(schema)["properties"]["image"]["properties"]["repository"][
        "description"] == "Where the image comes from."
    assert readme != (CHART / "README.md").read_text()


def test_an_uncommented_value_is_refused(tmp_path):
    original = (CHART / "values.yaml").read_text()
    bare = original.replace("  # Where the image is pulled from.\n", "", 1)
    assert bare != original
    try:
        _generator(bare, tmp_path).generate()
    except SystemExit as exit_:
        assert "image.repository" in str(exit_)
    else:
        raise AssertionError("an uncommented value was documented with no description")


def test_the_table_has_a_row_for_every_leaf_value():
    readme = (CHART / "README.md").read_text()
    section = readme.split("<!-- values-reference:start")[1].split("<!-- values-reference:end")[0]
    rows = set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for top in values:
        assert top in rows or any(r.startswith(f"{top}.") for r in rows), top
    assert {"logLevel", "webhook.hostNetwork", "crds.keep", "grafana.dashboard.enabled",
            "tls.certManager.issuerRef.kind", "operator.extraEnv"} <= rows
