"""docs/gitops.md shows the release recipes' scripts verbatim (the e2e tests run the files in
docs/examples/releases), so the page cannot drift from what is tested."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "gitops.md"
EXAMPLES = REPO / "docs" / "examples" / "releases"
BLOCK = re.compile(r"^`([\w.-]+)`:\n```(?:sh|yaml)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def shown() -> dict[str, str]:
    return {name: body for name, body in BLOCK.findall(DOC.read_text())}


def test_every_example_is_on_the_page_verbatim():
    blocks = shown()
    files = sorted(p.name for p in EXAMPLES.iterdir())
    assert sorted(blocks) == files
    for name, body in blocks.items():
        assert body == (EXAMPLES / name).read_text(), name


def test_the_scripts_parse_and_stop_at_the_first_error():
    for script in sorted(EXAMPLES.glob("*.sh")):
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, (script.name, proc.stderr)
        assert "\nset -eu\n" in script.read_text(), script.name


def test_the_controller_settings_retry_and_order_the_sync():
    app = yaml.safe_load((EXAMPLES / "argocd-application.yaml").read_text())
    policy = app["spec"]["syncPolicy"]
    assert "ServerSideApply=true" in policy["syncOptions"]
    assert policy["retry"]["limit"] > 1 and policy["retry"]["backoff"]["factor"] > 1
    approvals, apps = yaml.safe_load_all((EXAMPLES / "flux-kustomizations.yaml").read_text())
    assert apps["spec"]["dependsOn"] == [{"name": approvals["metadata"]["name"]}]
    assert apps["spec"]["retryInterval"]
