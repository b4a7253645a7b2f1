"""The trust store (SPEC §9): which public keys speak for which approver, and where.

It is refused as a whole when any entry is wrong (fail closed): a half-loaded trust
store would quietly drop an approver or, worse, keep a key that was meant to go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from changegate.core.budget import Budget
from changegate.core.dsse import PublicKey, load_public_key
from changegate.core.errors import ChangeGateError, TrustStoreError


class ApproverEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    role: Literal["approver", "requester"] = "approver"
    # Required (SPEC §9): an entry without it approves nowhere, and the loader warns.
    namespaces: tuple[str, ...] = ()
    senior: bool = False  # SPEC §6a: counts as a senior signature
    keys: tuple[str, ...] = Field(min_length=1)

    def may_approve_in(self, namespace: str) -> bool:
        return "*" in self.namespaces or namespace in self.namespaces


class _TrustFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approvers: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class TrustedKey:
    approver: ApproverEntry
    key: PublicKey


class TrustStore:
    """Loaded keys indexed by keyid. ``version`` changes whenever the content does."""

    def __init__(self, entries: list[ApproverEntry], keys: dict[str, TrustedKey], version: str,
                 warnings: tuple[str, ...] = ()) -> None:
        self.entries = entries
        self._by_keyid = keys
        self.version = version
        self.warnings = warnings  # entries that load but grant nothing (no namespaces)

    def __len__(self) -> int:
        return len(self._by_keyid)

    def trusted_keys(self) -> Iterator[TrustedKey]:
        return iter(self._by_keyid.values())

    def by_keyid(self, keyid: str) -> TrustedKey | None:
        return self._by_keyid.get(keyid)

    def keys_for(self, namespace: str) -> tuple[TrustedKey, ...]:
        """Every key whose entry may sign in ``namespace`` (approver or requester)."""
        return tuple(k for k in self._by_keyid.values() if k.approver.may_approve_in(namespace))

    def find_signer(self, signature: bytes, message: bytes, keyid_hint: str, namespace: str,
                    *, tried: set[str], budget: Budget) -> TrustedKey | None:
        """The key trusted in ``namespace`` that made ``signature`` (SPEC §4 rule 1).

        The key ``keyid_hint`` names is tried first; after it, each other key trusted in
        the namespace at most once per ``tried`` set (the caller keeps one per approval),
        so sixteen junk signatures cost sixteen verifications plus one per key, not
        sixteen times every key. Each verification is taken from ``budget``.
        """
        hinted = self._by_keyid.get(keyid_hint)
        if hinted is not None and hinted.approver.may_approve_in(namespace):
            budget.take()
            if hinted.key.verify(signature, message):
                return hinted
        for trusted in self.keys_for(namespace):
            keyid = trusted.key.keyid
            if trusted is hinted or keyid in tried:
                continue
            tried.add(keyid)
            budget.take()
            if trusted.key.verify(signature, message):
                return trusted
        return None

    def eligible_approvers(self, namespace: str, *, allow_service_accounts: bool,
                           automation: frozenset[str] = frozenset()) -> frozenset[str]:
        """Who may approve in ``namespace``; automation identities never do (SPEC §6a)."""
        return frozenset(
            e.name for e in self.entries
            if e.role == "approver"
            and e.may_approve_in(namespace)
            and e.name not in automation
            and (allow_service_accounts or not e.name.startswith("system:")))

    def seniors(self) -> frozenset[str]:
        """Names of the entries marked ``senior: true`` (role approver)."""
        return frozenset(e.name for e in self.entries if e.senior and e.role == "approver")


def _entry_label(index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"approvers[{index}]" + (f" ({name})" if isinstance(name, str) else "")


def load_trust_store(text: str | bytes) -> TrustStore:
    """Parse approvers.yaml. Raises TrustStoreError naming the bad entry."""
    raw_bytes = text.encode() if isinstance(text, str) else text
    try:
        doc = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise TrustStoreError(f"trust store: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if doc is None:
        doc = {}
    try:
        parsed = _TrustFile.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        raise TrustStoreError(f"trust store: {where}: {err['msg']}") from exc
    entries: list[ApproverEntry] = []
    keys: dict[str, TrustedKey] = {}
    names: set[str] = set()
    warnings: list[str] = []
    for index, raw in enumerate(parsed.approvers):
        label = _entry_label(index, raw)
        try:
            entry = ApproverEntry.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise TrustStoreError(f"trust store: {label}: {where}: {err['msg']}") from exc
        if entry.name in names:
            raise TrustStoreError(f"trust store: {label}: approver {entry.name!r} is listed twice")
        names.add(entry.name)
        for key_index, pem in enumerate(entry.keys):
            try:
                key = load_public_key(pem)
            except ChangeGateError as exc:
                raise TrustStoreError(f"trust store: {label}: keys[{key_index}]: {exc}") from exc
            if key.keyid in keys:
                other = keys[key.keyid].approver.name
                raise TrustStoreError(
                    f"trust store: {label}: keys[{key_index}] is also listed under {other!r}; "
                    "one key must speak for one person"
                )
            keys[key.keyid] = TrustedKey(entry, key)
        if not entry.namespaces:
            warnings.append(f"trust store: {label} lists no namespaces and approves nowhere; "
                            'add namespaces: [...] (["*"] for all)')
        entries.append(entry)
    return TrustStore(entries, keys, "sha256:" + hashlib.sha256(raw_bytes).hexdigest(),
                      tuple(warnings))


def trust_entry_yaml(name: str, public_pem: str, namespaces: list[str] | None = None) -> str:
    """The trust-store entry `changegate keygen` prints for an administrator to add."""
    entry = {"name": name, "role": "approver", "namespaces": namespaces or ["*"],
             "keys": [public_pem]}
    return yaml.dump({"approvers": [entry]}, Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Writes PEM blocks as YAML literal blocks (``|``), the way people paste them."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)
