"""The statement parser: strict, and it raises nothing but StatementError."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from changegate.core.errors import StatementError
from changegate.core.statement import build_statement, parse_statement

T0 = datetime(2026, 11, 23, 8, tzinfo=UTC)
DIGEST = "sha256:" + "a" * 64


def good() -> bytes:
    return build_statement(
        cluster="prod", target={"apiVersion": "apps/v1", "kind": "Deployment",
                                "namespace": "payments", "name": "checkout", "uid": "u1"},
        operation="UPDATE", from_digest="sha256:" + "b" * 64, to_digest=DIGEST,
        change_record={"id": "CHG-1", "url": "https://x"}, requested_by="alice",
        issued_at=T0, expires_at=T0 + timedelta(hours=4), nonce=str(uuid.uuid4()))


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_statement_error(raw):
    with pytest.raises(StatementError):
        parse_statement(raw)


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["_type", "subject", "predicate", "predicateType",
                                         "name", "digest", "sha256", "x"]), c, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_raises_only_statement_error(doc):
    with pytest.raises(StatementError):
        parse_statement(json.dumps(doc).encode())


def test_a_built_statement_parses():
    st_ = parse_statement(good())
    assert st_.predicate.toDigest == DIGEST and st_.subject[0].digest.sha256 == "a" * 64


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["predicate"].update(digestAlgorithm="k8s/v2"), "digestAlgorithm"),
    (lambda d: d["predicate"].update(issuedAt="2026-11-23T08:00:00+01:00"), "RFC 3339"),
    (lambda d: d["predicate"].update(nonce="not-a-uuid"), "nonce"),
    # uuid.UUID() accepts these, but the ledger cannot record them as ConfigMap keys
    (lambda d: d["predicate"].update(nonce="{12345678-1234-4234-8234-123456789abc}"), "nonce"),
    (lambda d: d["predicate"].update(nonce="urn:uuid:12345678-1234-4234-8234-123456789abc"),
     "nonce"),
    (lambda d: d["predicate"].update(nonce="12345678-1234-4234-8234-123456789ABC"), "nonce"),
    (lambda d: d.update(subject=[]), "subject"),
    (lambda d: d["subject"][0]["digest"].update(sha256="c" * 64), "subject digest"),
    (lambda d: d["predicate"]["target"].update(kind="Secret"), "not a gated kind"),
    (lambda d: d["predicate"].update(fromDigest="none"), "fromDigest"),
    (lambda d: d["predicate"].update(extra=True), "unknown field"),
])
def test_strict_rules(mutate, needle):
    doc = json.loads(good())
    mutate(doc)
    with pytest.raises(StatementError, match=needle):
        parse_statement(json.dumps(doc).encode())


def test_oversized_statement_is_refused():
    with pytest.raises(StatementError, match="limit"):
        parse_statement(b" " * (16 * 1024 + 1))
