"""Run one process of the changegate image the way a pod runs it, with buildah only.

No registry and no daemon here, and `podman run` cannot start containers on these machines
(crun cannot set the rlimits it is given), so a process runs with `buildah run --isolation
chroot` in a working container of the image:
- the image's own ENTRYPOINT, user (buildah run applies the image's USER) and environment;
- its root filesystem read-only, as the chart's `readOnlyRootFilesystem: true`. buildah run
  has no flag for that, so the working container's overlay mount is remounted read-only on
  the host before the run. buildah run bind-mounts files over a few paths and creates the
  missing mount points first, which a read-only root refuses: the one it adds outside /etc
  (/run/.containerenv) and ours (/etc/changegate) are created before the remount;
- /tmp a writable scratch directory (the chart's emptyDir), /etc/changegate the mounted
  configuration, TLS key pair and kubeconfig (the chart's ConfigMap and Secret volumes);
- the host's network, so it reaches the API server on 127.0.0.1 and serves on 127.0.0.1.

Stopping sends SIGTERM to the image's process itself, as the kubelet does; buildah run
would SIGKILL it. On a read-only root buildah 1.28 then fails to remove the mount point it
created and panics while logging that (a nil logger), after its child has exited, so its
exit status is not the process's and nothing here relies on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

UID = GID = 65532  # the image's USER (Dockerfile)
CONFIG_DIR = "/etc/changegate"
BUILDAH = os.path.realpath(shutil.which("buildah") or "/usr/bin/buildah")


def buildah(*args: str, timeout: float = 120) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True,
                          timeout=timeout).stdout.strip()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The fields after the command name, which may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


class Container:
    """One working container of `image`; `start(args)` runs ENTRYPOINT + args in it."""

    def __init__(self, image: str, files: dict[str, Path], log: Path) -> None:
        self.image = image
        self.files = files  # path under /etc/changegate -> host file
        self.log = log
        self.name = f"changegate-e2e-{uuid.uuid4().hex[:8]}"
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.rootfs: Path | None = None

    def _volumes(self) -> list[str]:
        """The configuration and a scratch /tmp, owned by the image's user (the kubelet's
        fsGroup does this for a pod's volumes)."""
        config, scratch = self.work / "config", self.work / "tmp"
        for rel, src in self.files.items():
            dst = config / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            dst.chmod(0o600)
        scratch.mkdir(mode=0o700)
        for path in [config, *config.rglob("*"), scratch]:
            os.chown(path, UID, GID)
        return ["-v", f"{config}:{CONFIG_DIR}:ro", "-v", f"{scratch}:/tmp"]

    def start(self, args: list[str]) -> subprocess.Popen[bytes]:
        info = json.loads(buildah("inspect", "--type", "image", self.image))
        entrypoint = info["OCIv1"]["config"]["Entrypoint"]
        buildah("from", "--pull-never", "--name", self.name, self.image)
        self.rootfs = Path(buildah("mount", self.name))
        (self.rootfs / "run" / ".containerenv").touch()
        (self.rootfs / CONFIG_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(self.rootfs)], check=True, timeout=30)
        argv = ["buildah", "run", "--isolation", "chroot", "--network", "host",
                *self._volumes(), self.name, "--", *entrypoint, *args]
        # buildah's run directory (hosts, resolv.conf, mount points) under TMPDIR: its
        # panicking cleanup leaves it, so it goes with our work directory.
        env = {**os.environ, "TMPDIR": str(self.work)}
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)
        return self.proc

    def main_pid(self) -> int | None:
        """The image's process: the first below `buildah run` that is not buildah itself (it
        re-executes itself for its chroot stages, from /usr/bin/buildah or a memfd copy)."""
        if self.proc is None:
            return None
        tree, todo = _children(), [self.proc.pid]
        while todo:
            pid = todo.pop(0)
            exe = _exe(pid)
            if exe and exe != BUILDAH and not exe.startswith("/memfd:buildah"):
                return pid
            todo.extend(tree.get(pid, []))
        return None

    def status(self) -> dict[str, str]:
        """/proc/PID/status of the image's process."""
        pid = self.main_pid()
        assert pid is not None, "the image's process is not running"
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}

    def root_mount_options(self) -> set[str]:
        """The mount options of / as the image's process sees it."""
        pid = self.main_pid()
        assert pid is not None, "the image's process is not running"
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == "/":
                return set(fields[5].split(","))
        raise AssertionError("no / in the process's mountinfo")

    def stop(self, timeout: float = 15) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            pid = self.main_pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.remove()

    def remove(self) -> None:
        if self.rootfs is not None:
            subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60,
                           check=False)
            self.rootfs = None
        shutil.rmtree(self.work, ignore_errors=True)

