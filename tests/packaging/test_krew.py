"""The krew release: plugins/krew/build.py makes the archive and renders the manifest; the
manifest has krew's Plugin shape and says what the archive holds; the wrapper it names,
laid out the way krew lays it out (a link in a bin dir), runs `kubectl changegate` from a
virtualenv it makes on first use. With a krew binary on PATH (`kubectl-krew`), krew itself
installs the archive instead."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.cluster import GoMissing, ensure_binaries
from tests.packaging.conftest import ROOT, wheel_of

pytestmark = pytest.mark.packaging

KREW_DIR = ROOT / "plugins" / "krew"
SEMVER = re.compile(r"^v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


@pytest.fixture(scope="module")
def release(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("krew")
    done = subprocess.run([sys.executable, str(KREW_DIR / "build.py"), "--out", str(out),
                           "--wheel", str(wheel_of(dist)), "--base-url",
                           "https://example.invalid/download/"], capture_output=True,
                          text=True, timeout=120, check=True)
    archive, manifest = (Path(line) for line in done.stdout.split())
    return archive, manifest


def test_the_manifest_is_a_krew_plugin_describing_the_archive(release, dist):
    archive, manifest_path = release
    doc = yaml.safe_load(manifest_path.read_text())
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert doc["kind"] == "Plugin" and doc["metadata"]["name"] == "changegate"
    spec = doc["spec"]
    version = wheel_of(dist).name.split("-")[1]
    assert spec["version"] == f"v{version}" and SEMVER.match(spec["version"])
    assert spec["homepage"].startswith("https://")
    assert spec["shortDescription"] and len(spec["shortDescription"]) <= 50
    assert "python3" in spec["caveats"]
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {p["selector"]["matchLabels"]["os"] for p in spec["platforms"]} == {"linux",
                                                                                "darwin"}
    for platform in spec["platforms"]:
        assert set(platform) == {"selector", "uri", "sha256", "files", "bin"}
        assert platform["uri"] == f"https://example.invalid/download/{archive.name}"
        assert platform["sha256"] == sha256
        for entry in platform["files"]:
            assert set(entry) == {"from", "to"}
            assert fnmatch.filter(members, entry["from"]), entry["from"]
        assert platform["bin"] == "kubectl-changegate"
        assert members["kubectl-changegate"].mode & 0o111
    wrapper = tar_text(archive, "kubectl-changegate")
    assert f'version="{version}"' in wrapper and "@VERSION@" not in wrapper
    # The template names only files of this repository.
    assert (KREW_DIR / "kubectl-changegate").is_file()
    assert (KREW_DIR / "build.py").is_file()


def tar_text(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()


def test_the_same_wheel_makes_the_same_archive(release, dist, tmp_path):
    """The sha256 in a published manifest can be re-derived from the wheel."""
    archive, _ = release
    done = subprocess.run([sys.executable, str(KREW_DIR / "build.py"), "--out", str(tmp_path),
                           "--wheel", str(wheel_of(dist))], capture_output=True, text=True,
                          timeout=120, check=True)
    again = Path(done.stdout.split()[0])
    assert again.read_bytes() == archive.read_bytes()


def test_kubectl_runs_the_krew_installed_plugin(release, tmp_path):
    try:
        kubectl = ensure_binaries() / "kubectl"
    except GoMissing:
        pytest.skip("no kubectl: the control-plane binaries are not built")
    archive, manifest = release
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(KREW_ROOT=str(tmp_path / "krew"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    krew = shutil.which("kubectl-krew")
    if krew is not None:
        # krew checks the manifest, the sha256 and the files, then links the bin.
        subprocess.run([krew, "install", f"--manifest={manifest}", f"--archive={archive}"],
                       env=env, capture_output=True, text=True, timeout=120, check=True)
    else:
        # What krew does: unpack into store/NAME/VERSION, link bin into KREW_ROOT/bin.
        store = tmp_path / "krew" / "store" / "changegate" / "v"
        with tarfile.open(archive) as tar:
            tar.extractall(store, filter="data")
        (tmp_path / "krew" / "bin").mkdir(parents=True)
        (tmp_path / "krew" / "bin" / "kubectl-changegate").symlink_to(
            store / "kubectl-changegate")
    env["PATH"] = os.pathsep.join([str(tmp_path / "krew" / "bin"), str(kubectl.parent),
                                   str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    first = subprocess.run([str(kubectl), "changegate", "--version"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "first run, installing changegate" in first.stderr
    assert first.stdout.startswith("changegate, version ")
    second = subprocess.run([str(kubectl), "changegate", "--help"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60, check=False)
    assert second.returncode == 0 and "first run" not in second.stderr
    assert second.stdout.startswith("Usage: changegate")
