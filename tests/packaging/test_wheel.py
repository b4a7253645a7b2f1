"""The CLI as people install it: `python -m build` makes an sdist and a wheel, pipx installs
the wheel into a fresh virtualenv, and a real kubectl finds `kubectl changegate` and its
completion there. Slow (a build and an install from the package index, about a minute and
a half): `-m "not packaging"` leaves it out."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.cluster import GoMissing, ensure_binaries
from tests.packaging.conftest import ROOT, wheel_of

pytestmark = pytest.mark.packaging

PACKAGE = ROOT / "controller" / "changegate"
SCRIPTS = ("changegate", "kubectl-changegate", "kubectl_complete-changegate")


def data_files() -> list[str]:
    """The package's non-Python files, as paths inside the package (demo data, py.typed)."""
    return sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc")
                  and "__pycache__" not in p.parts)


def test_the_wheel_and_sdist_carry_license_types_and_data(dist):
    names = set(zipfile.ZipFile(wheel_of(dist)).namelist())
    assert "changegate/py.typed" in names
    assert {"changegate/demo/deployment.json", "changegate/demo/configmap.json"} <= names
    assert set(data_files()) <= names, set(data_files()) - names
    [info] = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert f"{info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel_of(dist)).read(f"{info}/entry_points.txt").decode()
    for script in SCRIPTS:
        assert f"{script} = " in entry_points
    [sdist] = dist.glob("changegate-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= members
    assert {f"controller/{f}" for f in data_files()} <= members


def test_pipx_installs_it_and_kubectl_runs_the_plugin(dist, tmp_path):
    try:
        kubectl = ensure_binaries() / "kubectl"
    except GoMissing:
        pytest.skip("no kubectl: the control-plane binaries are not built")
    home = tmp_path / "pipx"
    env = {**os.environ, "PIPX_HOME": str(home), "PIPX_BIN_DIR": str(home / "bin"),
           "PIPX_MAN_DIR": str(home / "man")}
    env.pop("PYTHONPATH", None)  # the installed copy, not this checkout
    done = subprocess.run([sys.executable, "-m", "pipx", "install", str(wheel_of(dist))],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for script in SCRIPTS:
        assert (home / "bin" / script).exists(), script
    # A PATH with the pipx bin dir and kubectl, and nothing of this checkout.
    env["PATH"] = os.pathsep.join([str(home / "bin"), str(kubectl.parent), "/usr/bin", "/bin"])
    where = subprocess.run([str(home / "bin" / "changegate"), "completion", "bash"],
                           capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "_CHANGEGATE_COMPLETE" in where.stdout
    helped = subprocess.run([str(kubectl), "changegate", "--help"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60, check=False)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: changegate [OPTIONS] COMMAND [ARGS]...")
    assert "request" in helped.stdout and "approve" in helped.stdout
    listed = subprocess.run([str(kubectl), "plugin", "list"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert str(home / "bin" / "kubectl-changegate") in listed.stdout
    completed = subprocess.run([str(kubectl), "__complete", "changegate", "sta"],
                               capture_output=True, text=True, env=env, timeout=60,
                               check=True)
    assert completed.stdout.splitlines() == ["status\tExplain what a ChangeApproval still needs.",
                                             ":4"]
    # The installed code is the wheel's, not this checkout's.
    origin = subprocess.run([str(home / "venvs" / "changegate" / "bin" / "python"), "-c",
                             "import changegate; print(changegate.__file__)"],
                            capture_output=True, text=True, env=env, timeout=60, check=True)
    assert str(home) in origin.stdout and str(ROOT) not in origin.stdout
