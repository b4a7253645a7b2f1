"""The serving certificate: an SSLContext from files, reloaded in place when they change.

cert-manager and the kubelet rotate a Secret volume by swapping a symlink (`..data`), so
the files change inode rather than content in place; polling stat() of each path's target
(device, inode, mtime, size) every few seconds sees both kinds of change without inotify.

`load_cert_chain()` on the SAME SSLContext makes the next handshake present the new
certificate while the listener keeps running: no restart, no dropped connection. A new
pair is first loaded into a scratch context, from private copies of the bytes read once,
so a half-rotated pair (new cert, old key) or a file swapped between two reads can never
reach the live context; the old certificate keeps serving until a good pair appears.

With a client CA (`--client-ca`, opt-in) every handshake must present a certificate that
CA signed: for clusters whose API server presents one to its webhooks (kube-apiserver's
`--admission-control-config-file` with a kubeconfig for the webhook), so no pod can post a
review at all. A changed CA file is added to the trusted CAs in place (a rotation overlaps
old and new); dropping a CA needs a restart (an SSLContext cannot forget one).
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from pathlib import Path

from changegate.core.errors import ChangeGateError
from changegate.webhook.poll import poll

log = logging.getLogger("changegate.webhook.tls")

# cert-manager renews 30 days ahead (chart: renewBefore 720h), so any poll interval works;
# 5 s keeps a manual rotation quick to observe and costs two stat() calls.
POLL_SECONDS = 5.0


class TLSFileError(ChangeGateError):
    """The certificate or key cannot be read or does not form a pair."""


def _signature(path: str) -> tuple[int, int, int, int]:
    st = Path(path).stat()  # follows symlinks: a swapped ..data link gives a new inode
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Kubernetes API servers speak TLS 1.3/1.2 with ECDHE; no reason to offer anything older.
    context.options |= ssl.OP_NO_COMPRESSION
    return context


class ReloadingCertificate:
    """Owns the webhook's server SSLContext; `check()` reloads it when the files change."""

    def __init__(self, cert_file: str, key_file: str, *, poll_seconds: float = POLL_SECONDS,
                 client_ca: str | None = None):
        self.cert_file, self.key_file = cert_file, key_file
        self.client_ca = client_ca
        self.poll_seconds = poll_seconds
        self.context = _server_context()
        if client_ca is not None:
            # No certificate, or one the CA did not sign: the handshake fails, before any
            # HTTP is read.
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.reloads = 0
        self._seen: tuple[object, ...] | None = None
        self._load()

    def _current(self) -> tuple[object, ...]:
        files = (self.cert_file, self.key_file,
                 *((self.client_ca,) if self.client_ca is not None else ()))
        return tuple(_signature(f) for f in files)

    def _load(self) -> None:
        try:
            seen = self._current()
            cert = Path(self.cert_file).read_bytes()
            key = Path(self.key_file).read_bytes()
        except OSError as exc:
            raise TLSFileError(f"--tls-cert/--tls-key: cannot read {exc.filename}: "
                               f"{exc.strerror}") from exc
        client_ca = self._read_client_ca()
        with tempfile.TemporaryDirectory(prefix="changegate-tls-") as scratch:
            cert_copy, key_copy = Path(scratch, "tls.crt"), Path(scratch, "tls.key")
            cert_copy.write_bytes(cert)
            key_copy.touch(mode=0o600)
            key_copy.write_bytes(key)
            try:
                _server_context().load_cert_chain(cert_copy, key_copy)  # proves the pair
            except (ssl.SSLError, OSError) as exc:
                raise TLSFileError(f"--tls-cert {self.cert_file} / --tls-key {self.key_file}: "
                                   f"not a matching PEM certificate and key "
                                   f"({getattr(exc, 'reason', None) or exc})") from exc
            self.context.load_cert_chain(cert_copy, key_copy)
        if client_ca is not None:
            self.context.load_verify_locations(cadata=client_ca)
        self._seen = seen

    def _read_client_ca(self) -> str | None:
        """The client CA's PEM, proven loadable on a scratch context first."""
        if self.client_ca is None:
            return None
        try:
            text = Path(self.client_ca).read_text(encoding="ascii")
            _server_context().load_verify_locations(cadata=text)
        except (OSError, UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
            detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise TLSFileError(f"--client-ca {self.client_ca}: not a readable PEM CA "
                               f"certificate ({detail})") from exc
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise TLSFileError(f"--client-ca {self.client_ca}: no PEM certificate in it")
        return text

    def check(self) -> bool:
        """Reload if either file changed. True when a new certificate is now served."""
        try:
            current = self._current()
        except OSError as exc:
            log.warning("tls files unreadable, keeping the current certificate",
                        extra={"fields": {"error": str(exc)}})
            return False
        if current == self._seen:
            return False
        try:
            self._load()
        except TLSFileError as exc:
            # Mid-rotation (cert written, key not yet): keep serving the old pair, retry later.
            log.warning("new tls files do not load yet, keeping the current certificate",
                        extra={"fields": {"error": str(exc)}})
            return False
        self.reloads += 1
        log.info("tls certificate reloaded", extra={"fields": {"reloads": self.reloads}})
        return True

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        await poll(self.check, self.poll_seconds, log, "tls reload check")
