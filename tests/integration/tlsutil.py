"""A test CA (trustme) and serving certificates for 127.0.0.1 and localhost, as files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509


@dataclass
class TestCA:
    authority: trustme.CA

    @classmethod
    def create(cls, name: str = "changegate-integration-ca") -> TestCA:
        return cls(trustme.CA(organization_name=name))

    @property
    def pem(self) -> bytes:
        return self.authority.cert_pem.bytes()

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, directory: Path, common_name: str = "changegate-webhook",
              stem: str = "tls") -> tuple[Path, Path, x509.Certificate]:
        """A certificate for 127.0.0.1 and localhost: (cert file, key file, cert). trustme
        makes it good for either end of a connection (serverAuth and clientAuth), so it is
        also the client certificate an API server presents."""
        leaf = self.authority.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_pem = leaf.cert_chain_pems[0].bytes()
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(leaf.private_key_pem.bytes())
        return cert_file, key_file, x509.load_pem_x509_certificate(cert_pem)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.authority.configure_trust(context)
        return context
