"""Build the krew release of the changegate CLI: an archive and its rendered manifest.

    python3 plugins/krew/build.py --out dist/krew [--wheel dist/changegate-X-py3-none-any.whl]
        [--base-url https://github.com/changegate/changegate/releases/download/vX]

The archive holds the wheel, the wrapper kubectl-changegate (it installs the wheel into a
virtualenv on first use) and the LICENSE; the manifest names it at BASE_URL/ARCHIVE with
its sha256. Without --wheel the wheel is built with `python -m build`. Try it locally with
`kubectl krew install --manifest=OUT/changegate.yaml --archive=OUT/ARCHIVE`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_BASE = "https://github.com/changegate/changegate/releases/download/v{version}"
WHEEL = re.compile(r"^changegate-(?P<version>[^-]+)-py3-none-any\.whl$")


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True)
    return next(out.glob("changegate-*.whl"))


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    # Fixed owner and time: the same inputs make the same archive, so the same sha256.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build(wheel: Path, out: Path, base_url: str | None) -> tuple[Path, Path]:
    match = WHEEL.match(wheel.name)
    if match is None:
        raise SystemExit(f"{wheel.name}: not a changegate wheel")
    version = match["version"]
    wrapper = (HERE / "kubectl-changegate").read_text().replace("@VERSION@", version)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"kubectl-changegate-v{version}.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add(tar, "kubectl-changegate", wrapper.encode(), 0o755)
        _add(tar, wheel.name, wheel.read_bytes(), 0o644)
        _add(tar, "LICENSE", (ROOT / "LICENSE").read_bytes(), 0o644)
    archive.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    base = (base_url or DEFAULT_BASE.format(version=version)).rstrip("/")
    manifest = out / "changegate.yaml"
    manifest.write_text(Template((HERE / "changegate.yaml").read_text()).substitute(
        version=version, uri=f"{base}/{archive.name}", sha256=sha256))
    return archive, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheel", type=Path)
    parser.add_argument("--base-url")
    args = parser.parse_args()
    if args.wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            archive, manifest = build(build_wheel(Path(tmp)), args.out, args.base_url)
    else:
        archive, manifest = build(args.wheel, args.out, args.base_url)
    print(archive)
    print(manifest)


if __name__ == "__main__":
    main()
