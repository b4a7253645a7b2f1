"""Our DSSE signatures verify with securesystemslib's DSSE code, and the reverse."""

from __future__ import annotations

import base64

import pytest
import yaml
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, Signature, SSlibKey

from changegate.core import dsse
from changegate.core.budget import Budget
from changegate.core.trust import load_trust_store

PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1"}'


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_our_signature_verifies_with_securesystemslib(algorithm):
    key = dsse.generate(algorithm)
    entry = dsse.sign_envelope(key, PAYLOAD)
    ssl_key = SSlibKey.from_crypto(key.public.key, keyid=entry["keyid"])
    envelope = Envelope(PAYLOAD, dsse.PAYLOAD_TYPE,
                        {entry["keyid"]: Signature(entry["keyid"],
                                                   base64.b64decode(entry["sig"]).hex())})
    assert entry["keyid"] in envelope.verify([ssl_key], 1)


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_securesystemslib_signature_verifies_with_ours(algorithm):
    key = dsse.generate(algorithm)
    signer = CryptoSigner(key.key)
    envelope = Envelope(PAYLOAD, dsse.PAYLOAD_TYPE, {})
    sig = envelope.sign(signer)
    trust = load_trust_store(yaml.safe_dump(
        {"approvers": [{"name": "bob", "namespaces": ["*"], "keys": [key.public.pem()]}]}))
    found = trust.find_signer(bytes.fromhex(sig.signature),
                              dsse.pae(dsse.PAYLOAD_TYPE, PAYLOAD), "ignored-hint", "payments",
                              tried=set(), budget=Budget())
    assert found is not None and found.approver.name == "bob"


def test_pae_matches_the_dsse_reference():
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")
    assert Envelope(b"hello world", "x", {}).pae() == dsse.pae("x", b"hello world")


@pytest.mark.parametrize("text", ["abc", "a=bc", "ab!c", "YWJj\n", "YW Jj", "YW+j_w=="])
def test_base64_outside_the_alphabet_or_truncated_is_invalid(text):
    with pytest.raises(ValueError):
        dsse.b64decode(text)


def test_url_safe_base64_is_accepted():
    assert dsse.b64decode("-_-_") == base64.urlsafe_b64decode("-_-_")
