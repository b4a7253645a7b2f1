"""DSSE v1 signing and verification (Ed25519 and ECDSA P-256), and the keys behind it.

A signature covers ``PAE(payloadType, payload)``, never the payload alone, so bytes signed
for one payload type cannot be replayed as another. Ed25519 signs PAE directly; ECDSA
P-256 signs it with SHA-256, DER-encoded (what securesystemslib and sigstore emit).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from changegate.core.errors import KeyFileError

PAYLOAD_TYPE = "application/vnd.in-toto+json"

_STD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 SP len(t) SP t SP len(b) SP b``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode(text: str) -> bytes:
    """Standard base64 with padding; URL-safe accepted. Anything outside the alphabet fails.

    Raises ValueError with a short reason.
    """
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    if _STD_B64.fullmatch(text):
        alt = None
    elif _URL_B64.fullmatch(text):
        alt = b"-_"
    else:
        raise ValueError("characters outside the base64 alphabet")
    if len(text) % 4:
        raise ValueError("base64 length is not a multiple of 4 (truncated?)")
    try:
        return base64.b64decode(text, altchars=alt, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


PublicKeyType = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKeyType = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class PublicKey:
    """A trusted verification key and its id (sha256 of the DER SubjectPublicKeyInfo)."""

    key: PublicKeyType
    keyid: str
    algorithm: str  # "ed25519" | "ecdsa-p256"

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, message)
            else:
                self.key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


def _keyid(key: PublicKeyType) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _wrap_public(key: object) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKey(key, _keyid(key), "ed25519")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"ECDSA curve {key.curve.name} is not accepted; use P-256")
        return PublicKey(key, _keyid(key), "ecdsa-p256")
    raise KeyFileError(
        f"{type(key).__name__.removeprefix('_')} keys are not accepted; use Ed25519 or ECDSA P-256"
    )


def load_public_key(pem: str | bytes) -> PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"not a PEM public key ({exc})") from exc
    return _wrap_public(key)


@dataclass(frozen=True)
class PrivateKey:
    key: PrivateKeyType
    public: PublicKey

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(message)
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))

    def pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )


def _wrap_private(key: object) -> PrivateKey:
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return PrivateKey(key, _wrap_public(key.public_key()))
    raise KeyFileError(
        f"{type(key).__name__.removeprefix('_')} keys are not accepted; use Ed25519 or ECDSA P-256"
    )


def is_encrypted(data: bytes) -> bool:
    """Whether a PEM or OpenSSH private key needs a passphrase."""
    if b"ENCRYPTED" in data:
        return True
    if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        try:
            serialization.load_ssh_private_key(data, password=None)
        except TypeError:
            return True
        except ValueError:
            return False
    return False


def load_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """PEM (PKCS#8, SEC1) or OpenSSH private key, optionally encrypted."""
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key: object = serialization.load_ssh_private_key(data, password=passphrase)
        else:
            key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise KeyFileError("the key is encrypted: a passphrase is needed") from exc
        raise KeyFileError("the key is not encrypted: give no passphrase") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if passphrase is not None and ("decrypt" in message.lower() or "password" in message.lower()
                                       or "bad" in message.lower()):
            raise KeyFileError("wrong passphrase for the key") from exc
        raise KeyFileError(f"not a private key this tool can read ({message})") from exc
    return _wrap_private(key)


def generate(algorithm: str = "ed25519") -> PrivateKey:
    if algorithm == "ed25519":
        return _wrap_private(ed25519.Ed25519PrivateKey.generate())
    if algorithm in ("ecdsa-p256", "p256"):
        return _wrap_private(ec.generate_private_key(ec.SECP256R1()))
    raise KeyFileError(f"unknown key type {algorithm!r}: use ed25519 or ecdsa-p256")


def sign_envelope(key: PrivateKey, payload: bytes, payload_type: str = PAYLOAD_TYPE
                  ) -> dict[str, str]:
    """One DSSE signature entry ``{keyid, sig}`` over PAE(payload_type, payload)."""
    return {"keyid": key.public.keyid, "sig": b64encode(key.sign(pae(payload_type, payload)))}
