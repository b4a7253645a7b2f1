"""The ChangeApproval CRD (crds/changeapprovals.changegate.io.yaml) and every example of it.

What is checked, and with what:
- the CRD itself against Kubernetes 1.37's own schema for CustomResourceDefinition
  (kubernetes-validate, strict: an unknown or misspelt key anywhere is an error);
- the invariants a reviewer relies on (SPEC §2, §4): names, the status subresource, enums
  exactly as SPEC, an immutability rule on every spec field but `signatures`, the
  append-only rule on `signatures`, bounds on every string and list (they are what keeps
  the CEL cost estimate under the API server's budget), no defaults inside the signed part;
- every ChangeApproval in the repo against the CRD's openAPIV3Schema with jsonschema.
  Unknown fields count as errors, as kubectl's default strict field validation makes them
  (the API server alone would prune them silently);
- the CRD's CEL rules, evaluated with cel-python over the examples and over updates of
  them, scoped the way the API server scopes them: a rule runs where its field is present,
  a transition rule (one naming oldSelf) only on update and where the old object has the
  field too, after defaulting.

cel-python is not cel-go: the proof that the rules compile and fit the cost budget in a
real kube-apiserver belongs to the e2e suite. Where the two are known to differ (CEL in
Kubernetes compares `format: date-time` strings as instants and cannot see undeclared
fields of a preserve-unknown-fields object) the CRD's comments say what is done about it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "changeapprovals.changegate.io.yaml"
KUBERNETES_VERSION = "1.37.0"

SPEC_OPERATIONS = ["CREATE", "UPDATE", "DELETE"]
SPEC_KINDS = ["Deployment", "ConfigMap"]
SPEC_STRATEGIES = ["direct", "canary"]
SPEC_PHASES = ["Pending", "Approved", "Applied", "Expired", "Rejected", "CanaryRunning",
               "CanaryFailed", "Promoted", "ReviewOwed", "Reviewed"]
SPEC_FIELDS = ["cluster", "target", "operation", "fromDigest", "toDigest", "changeRecord",
               "requestedBy", "issuedAt", "expiresAt", "rollout", "assistance", "manifest",
               "statement", "signatures"]
DIGEST_PATTERN = "^(none|sha256:[0-9a-f]{64})$"
MAX_STATEMENT_BYTES = 16 * 1024
MAX_SIGNATURES = 16
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://changegate.io/change-approval/v1"
PLURALS = {("apps/v1", "Deployment"): "deployments", ("v1", "ConfigMap"): "configmaps"}

# --------------------------------------------------------------------------------------
# Loading


def load_crd() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    assert len(docs) == 1, f"{CRD_PATH.name} must hold exactly one document"
    return docs[0]


CRD = load_crd()
SCHEMA: dict[str, Any] = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA: dict[str, Any] = SCHEMA["properties"]["spec"]

# Directories never searched for examples: VCS, caches, build trees (tests/cluster/.work
# holds Go caches), Helm templates (not YAML until rendered) and the e2e suite, whose
# ChangeApprovals are made on the fly and may be deliberately wrong.
_SKIP_DIRS = {"node_modules", "__pycache__", "venv", "build", "dist", "templates"}
_SKIP_PATHS = {REPO / "tests" / "e2e"}
_NAMED = re.compile(r"^changeapproval.*\.(ya?ml|json)$", re.IGNORECASE)


def example_files() -> list[Path]:
    found: set[Path] = set()
    for root, dirs, files in os.walk(REPO):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS
                         and here / d not in _SKIP_PATHS)
        in_examples = REPO / "examples" in (here, *here.parents)
        for name in files:
            if _NAMED.match(name) or (in_examples and name.endswith((".yaml", ".yml"))):
                found.add(here / name)
    return sorted(found)


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind", "").endswith("List"):
            yield from (item for item in doc.get("items") or [] if isinstance(item, dict))
        elif isinstance(doc, dict):
            yield doc


def load_examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in example_files():
        for index, doc in enumerate(_documents(path)):
            if doc.get("kind") == "ChangeApproval" and str(doc.get("apiVersion", "")).startswith(
                    "changegate.io/"):
                out.append((f"{path.relative_to(REPO)}#{index}", doc))
    return out


EXAMPLES = load_examples()
EXAMPLE_IDS = [name for name, _ in EXAMPLES]


def example(operation: str, strategy: str = "direct") -> dict[str, Any]:
    for _, doc in EXAMPLES:
        spec = doc["spec"]
        if spec["operation"] == operation and spec["rollout"]["strategy"] == strategy:
            return copy.deepcopy(doc)
    raise AssertionError(f"no example of a {operation} with strategy {strategy}")


# --------------------------------------------------------------------------------------
# OpenAPI v3 (Kubernetes structural schema) -> JSON Schema 2020-12


def to_json_schema(node: Any) -> Any:
    """Kubernetes' dialect as plain JSON Schema.

    `x-kubernetes-*` keys are dropped except the list types, which become the keywords
    checked below; `nullable` widens the type; an object with properties and without
    `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false` (strict field
    validation); `format` is left to FORMATS.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
            out[key] = value
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        elif key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (node.get("type") == "object" and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in node):
        out["additionalProperties"] = False
    return out


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
               ) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "array") or list_type == "atomic":
        return
    if list_type == "set":
        keys = [json.dumps(item, sort_keys=True) for item in instance]
    else:  # map
        names = schema.get("x-kubernetes-list-map-keys", [])
        keys = [json.dumps([item.get(n) if isinstance(item, dict) else None for n in names])
                for item in instance]
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate entry at index {index} in a "
                                             f"list-type {list_type}: {key}")
        seen.add(key)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        raise ValueError(f"{value!r} is not RFC 3339")
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


@FORMATS.checks("uri", raises=ValueError)
def _uri(value: object) -> bool:
    # Kubernetes checks `uri` with Go's url.ParseRequestURI: absolute URI or absolute path.
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    if re.search(r"\s", value) or not (parts.scheme or value.startswith("/")):
        raise ValueError(f"{value!r} is not an absolute URI")
    return True


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type})
VALIDATOR = KubernetesValidator(to_json_schema(SCHEMA), format_checker=FORMATS)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in VALIDATOR.iter_errors(obj))


# --------------------------------------------------------------------------------------
# Schema walking helpers


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]")


def rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"].strip() for r in node.get("x-kubernetes-validations") or []]


def _normalized(rule: str) -> str:
    return re.sub(r"\s+", " ", rule).strip()


def schema_at(path: str) -> dict[str, Any]:
    node = SCHEMA
    for part in path.strip(".").split("."):
        node = node["properties"][part]
    return node


# --------------------------------------------------------------------------------------
# The CRD as Kubernetes sees it


def test_the_crd_is_a_valid_kubernetes_1_37_object_in_strict_mode() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    validated = kubernetes_validate.validate(CRD, KUBERNETES_VERSION, strict=True)
    # validate() silently falls back to the newest schemas it ships: insist on 1.37.
    assert validated == "1.37"


def test_strict_validation_would_catch_a_misspelt_key_in_the_crd() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = copy.deepcopy(CRD)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validation"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_crd_has_the_names_of_spec_section_2() -> None:
    spec = CRD["spec"]
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == "changeapprovals.changegate.io"
    assert spec["group"] == "changegate.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ChangeApproval"
    assert spec["names"]["plural"] == "changeapprovals"
    assert spec["names"]["singular"] == "changeapproval"
    assert spec["names"]["shortNames"] == ["cga"]
    assert "changegate" in spec["names"]["categories"]
    assert "all" not in spec["names"]["categories"]


def test_v1alpha1_is_the_one_served_and_stored_version() -> None:
    versions = CRD["spec"]["versions"]
    assert [(v["name"], v["served"], v["storage"]) for v in versions] == [
        ("v1alpha1", True, True)]


def test_status_is_a_subresource_so_spec_writers_cannot_set_it() -> None:
    assert CRD["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_the_chart_not_this_file_adds_the_keep_policy() -> None:
    assert "helm.sh/resource-policy" not in (CRD["metadata"].get("annotations") or {})


def test_enums_are_exactly_those_of_spec_section_4() -> None:
    assert schema_at("spec.operation")["enum"] == SPEC_OPERATIONS
    assert schema_at("spec.target.kind")["enum"] == SPEC_KINDS
    assert schema_at("spec.target.apiVersion")["enum"] == ["apps/v1", "v1"]
    assert schema_at("spec.rollout.strategy")["enum"] == SPEC_STRATEGIES
    assert schema_at("status.phase")["enum"] == SPEC_PHASES
    assert schema_at("spec.assistance")["enum"] == ["none", "ai"]  # SPEC §6a, optional


def test_spec_has_every_field_of_spec_section_4_and_no_other() -> None:
    assert list(SPEC_SCHEMA["properties"]) == SPEC_FIELDS
    assert set(SCHEMA["required"]) == {"spec"}
    # manifest is required only for CREATE and UPDATE (a CEL rule), and signatures
    # default to [] (a request starts unsigned).
    assert set(SPEC_SCHEMA["required"]) == set(SPEC_FIELDS) - {"manifest", "signatures",
                                                                "assistance"}
    assert "has(self.manifest) == (self.operation != 'DELETE')" in rules(SPEC_SCHEMA)


def test_digests_statement_and_signatures_have_the_spec_limits() -> None:
    assert schema_at("spec.fromDigest")["pattern"] == DIGEST_PATTERN
    assert schema_at("spec.toDigest")["pattern"] == DIGEST_PATTERN
    # 16 KiB of statement bytes as padded base64
    assert schema_at("spec.statement")["maxLength"] == 4 * math.ceil(MAX_STATEMENT_BYTES / 3)
    signatures = schema_at("spec.signatures")
    assert signatures["maxItems"] == MAX_SIGNATURES
    assert signatures["x-kubernetes-list-type"] == "atomic"
    assert signatures["items"]["required"] == ["sig"]


def test_manifest_keeps_the_whole_object_without_embedding_rules() -> None:
    manifest = schema_at("spec.manifest")
    assert manifest["type"] == "object"
    assert manifest["x-kubernetes-preserve-unknown-fields"] is True
    assert manifest["x-kubernetes-embedded-resource"] is False


def test_every_spec_field_but_signatures_is_immutable() -> None:
    for name, node in SPEC_SCHEMA["properties"].items():
        if name == "signatures":
            continue
        assert any(re.search(r"(^|&& )self == oldSelf($| &&)", _normalized(r))
                   for r in rules(node)), f"spec.{name} has no `self == oldSelf` rule"


def test_signatures_may_only_be_appended() -> None:
    assert rules(schema_at("spec.signatures")) == ["oldSelf.all(s, s in self)"]


def test_optional_spec_fields_cannot_be_added_or_removed_after_creation() -> None:
    # A field-level transition rule runs only when both objects have the field.
    spec_rules = [_normalized(r) for r in rules(SPEC_SCHEMA)]
    for name in SPEC_SCHEMA["properties"]:
        if name in SPEC_SCHEMA["required"]:
            continue
        assert (f"has(self.{name}) == has(oldSelf.{name})" in spec_rules
                or f"has(self.{name}) || !has(oldSelf.{name})" in spec_rules), name


def test_nothing_in_the_signed_spec_has_a_default() -> None:
    # The spec must equal the signed statement; a server-side default would make it differ.
    defaulted = [path for path, node in walk(SPEC_SCHEMA, "spec") if "default" in node]
    assert defaulted == ["spec.signatures"]
    assert schema_at("spec.signatures")["default"] == []


def test_every_string_and_list_is_bounded_for_the_cel_cost_estimate() -> None:
    unbounded = []
    for path, node in walk(SCHEMA):
        if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
    # Inside manifest only the names the CEL rules compare are declared; the object is
    # bounded by the webhook's 1 MiB limit (SPEC §4) and the API server's request limit.
    allowed = {".apiVersion", ".kind", ".spec.manifest.apiVersion", ".spec.manifest.kind",
               ".spec.manifest.metadata.name", ".status.conditions[*].lastTransitionTime"}
    assert sorted(set(unbounded) - allowed) == []


def test_no_rule_sits_inside_a_list_item() -> None:
    # A rule under a list item runs once per item (cost times maxItems) and its oldSelf
    # depends on list correlation; this CRD needs neither. The CEL tests below rely on it.
    for path, node in walk(SCHEMA):
        assert "[*]" not in path or not rules(node), path


def _resolves(json_path: str) -> dict[str, Any] | None:
    if json_path == ".metadata.creationTimestamp":
        return {"type": "string", "format": "date-time"}
    try:
        return schema_at(json_path)
    except KeyError:
        return None


def test_printer_columns_show_what_a_person_asks_kubectl_get_for() -> None:
    columns = CRD["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c for c in columns}
    expected = {
        "Kind": ".spec.target.kind", "Target": ".spec.target.name", "Op": ".spec.operation",
        "Record": ".spec.changeRecord.id", "Approvals": ".status.approvals",
        "Required": ".status.required", "Phase": ".status.phase", "Expires": ".spec.expiresAt",
        "Age": ".metadata.creationTimestamp",
    }
    for name, json_path in expected.items():
        assert by_name[name]["jsonPath"] == json_path
        assert by_name[name].get("priority", 0) == 0, name
    for column in columns:
        node = _resolves(column["jsonPath"])
        assert node is not None, f"column {column['name']} points at nothing"
        if column["type"] == "integer":
            assert node["type"] == "integer", column["name"]
    # A `date` column prints the time since its value: a future expiry would be <invalid>.
    assert by_name["Expires"]["type"] == "string"
    assert by_name["Age"]["type"] == "date"


def test_selectable_fields_point_at_scalar_fields() -> None:
    for entry in CRD["spec"]["versions"][0].get("selectableFields", []):
        node = _resolves(entry["jsonPath"])
        assert node is not None and node["type"] in ("string", "integer", "boolean"), entry


def test_conditions_are_standard_metav1_conditions_keyed_by_type() -> None:
    conditions = schema_at("status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert set(item["properties"]) == {"type", "status", "observedGeneration",
                                       "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    status = schema_at("status")["properties"]
    assert {"phase", "approvers", "conditions", "approvals", "required",
            "observedGeneration"} <= set(status)
    assert status["approvers"]["x-kubernetes-list-type"] == "set"


# --------------------------------------------------------------------------------------
# The examples


def test_the_repo_has_examples_of_every_operation_kind_and_strategy() -> None:
    assert EXAMPLES, "no ChangeApproval examples found"
    specs = [doc["spec"] for _, doc in EXAMPLES]
    assert {s["operation"] for s in specs} == set(SPEC_OPERATIONS)
    assert {s["target"]["kind"] for s in specs} == set(SPEC_KINDS)
    assert {s["rollout"]["strategy"] for s in specs} == set(SPEC_STRATEGIES)


def test_the_example_search_skips_the_e2e_suite_and_finds_named_files() -> None:
    files = example_files()
    assert not [f for f in files if REPO / "tests" / "e2e" in f.parents]
    assert all(f.suffix in (".yaml", ".yml", ".json") for f in files)


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=EXAMPLE_IDS)
def test_example_matches_the_crd_schema(name: str, doc: dict[str, Any]) -> None:
    assert schema_errors(doc) == []
    assert doc["metadata"].get("name") and doc["metadata"].get("namespace"), name


def _b64(text: str) -> bytes:
    alt = b"-_" if re.search(r"[-_]", text) else None
    return base64.b64decode(text, altchars=alt, validate=True)


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=EXAMPLE_IDS)
def test_example_spec_says_what_its_statement_says(name: str, doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    raw = _b64(spec["statement"])
    assert len(raw) <= MAX_STATEMENT_BYTES
    statement = json.loads(raw)
    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == PREDICATE_TYPE
    predicate = statement["predicate"]
    assert predicate["digestAlgorithm"] == "k8s-desired-state/v1"
    target = dict(predicate["target"])
    assert target.pop("namespace") == doc["metadata"]["namespace"]
    assert target == spec["target"]
    for field in ("cluster", "operation", "fromDigest", "toDigest", "changeRecord",
                  "requestedBy", "issuedAt", "expiresAt", "rollout"):
        assert predicate[field] == spec[field], field
    [subject] = statement["subject"]
    plural = PLURALS[(spec["target"]["apiVersion"], spec["target"]["kind"])]
    assert subject["name"] == (f"k8s://{spec['target']['apiVersion']}/namespaces/"
                               f"{doc['metadata']['namespace']}/{plural}/{spec['target']['name']}")
    bound = spec["fromDigest"] if spec["operation"] == "DELETE" else spec["toDigest"]
    assert subject["digest"] == {"sha256": bound.removeprefix("sha256:")}
    for signature in spec.get("signatures", []):
        try:
            _b64(signature["sig"])
        except binascii.Error as exc:
            raise AssertionError(f"{name}: signature is not base64") from exc


# --------------------------------------------------------------------------------------
# Schema-level rejections (no CEL needed)

Mutation = Callable[[dict[str, Any]], object]


def _sig(i: int) -> dict[str, str]:
    return {"keyid": f"sha256:{i:064x}", "sig": base64.b64encode(bytes([i]) * 64).decode()}


REJECTED_BY_SCHEMA: list[tuple[str, Mutation, str]] = [
    ("digest with uppercase hex", lambda s: s.update(toDigest="sha256:" + "A" * 64), "toDigest"),
    ("digest cut short", lambda s: s.update(fromDigest="sha256:abc"), "fromDigest"),
    ("digest of another algorithm", lambda s: s.update(toDigest="sha512:" + "a" * 64),
     "toDigest"),
    ("unknown operation", lambda s: s.update(operation="PATCH"), "operation"),
    ("17 signatures", lambda s: s.update(signatures=[_sig(i) for i in range(17)]),
     "signatures"),
    ("a signature without sig", lambda s: s["signatures"].append({"keyid": "k"}),
     "signatures"),
    ("a signature that is not base64", lambda s: s["signatures"].append({"sig": "no base64!"}),
     "signatures"),
    ("statement over 16 KiB", lambda s: s.update(statement="A" * 21852), "statement"),
    ("statement wrapped on lines", lambda s: s.update(statement="QUFB\nQUFB"), "statement"),
    ("time with an offset", lambda s: s.update(issuedAt="2026-11-23T09:00:00+01:00"),
     "issuedAt"),
    ("time that is no date", lambda s: s.update(expiresAt="2026-11-31T08:00:00Z"), "expiresAt"),
    ("a gated kind that is not gated", lambda s: s["target"].update(kind="Secret"), "target"),
    ("a placeholder uid", lambda s: s["target"].update(uid="6f1c2d3e-..."), "target"),
    ("an unknown strategy", lambda s: s["rollout"].update(strategy="bluegreen"), "rollout"),
    ("no change record id", lambda s: s["changeRecord"].pop("id"), "changeRecord"),
    ("a change record url that is no url", lambda s: s["changeRecord"].update(url="see ITSM"),
     "changeRecord"),
    ("an unknown field", lambda s: s.update(approvedBy="bob"), "<root>"),
    ("no statement", lambda s: s.pop("statement"), "spec"),
]


@pytest.mark.parametrize(("what", "mutate", "where"), REJECTED_BY_SCHEMA,
                         ids=[r[0] for r in REJECTED_BY_SCHEMA])
def test_the_schema_rejects(what: str, mutate: Mutation, where: str) -> None:
    doc = example("UPDATE")
    assert schema_errors(doc) == []
    mutate(doc["spec"])
    errors = schema_errors(doc)
    assert errors, f"{what} was accepted"
    assert any(e.startswith(f"spec.{where}") or (where in ("<root>", "spec") and
                                                 e.startswith("spec:")) for e in errors), errors


def test_the_schema_rejects_a_bad_status() -> None:
    doc = example("UPDATE")
    doc["status"] = {"phase": "Done", "approvers": ["bob", "bob"], "approvals": -1}
    errors = schema_errors(doc)
    assert [e.split(":")[0] for e in errors] == ["status.approvals", "status.approvers",
                                                 "status.phase"]


def test_the_schema_accepts_a_full_status() -> None:
    doc = example("UPDATE")
    doc["status"] = {
        "phase": "Approved", "approvers": ["bob", "carol"], "approvals": 2, "required": 2,
        "observedGeneration": 1,
        "conditions": [{"type": "Approved", "status": "True", "reason": "Signed",
                        "message": "approved by bob, carol", "observedGeneration": 1,
                        "lastTransitionTime": "2026-11-23T08:10:00Z"}],
    }
    assert schema_errors(doc) == []
    doc["status"]["conditions"].append(dict(doc["status"]["conditions"][0]))
    assert schema_errors(doc) != []  # two conditions of one type


# --------------------------------------------------------------------------------------
# CEL rules, evaluated with cel-python


def _apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the API server does before validating: fill missing fields with their default."""
    if isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _apply_defaults(sub, value[name])
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _apply_defaults(node["items"], item)
    return value


@functools.cache
def _program(rule: str) -> Any:
    celpy = pytest.importorskip("celpy")
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel(value: Any, node: dict[str, Any]) -> Any:
    from celpy import celtypes

    if isinstance(value, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        return celtypes.MapType({
            celtypes.StringType(k): _cel(v, props.get(k, extra if isinstance(extra, dict) else {}))
            for k, v in value.items() if v is not None})
    if isinstance(value, list):
        items = node.get("items") if isinstance(node.get("items"), dict) else {}
        return celtypes.ListType([_cel(v, items) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str) and node.get("format") == "date-time":
        return celtypes.TimestampType(value)
    return celtypes.StringType(value)


def cel_violations(new: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Messages of the rules that fail, run the way the API server runs them."""
    celtypes = pytest.importorskip("celpy.celtypes")
    new = _apply_defaults(SCHEMA, copy.deepcopy(new))
    old = _apply_defaults(SCHEMA, copy.deepcopy(old)) if old is not None else None
    out: list[str] = []

    def visit(node: dict[str, Any], value: Any, old_value: Any, path: str) -> None:
        for rule in node.get("x-kubernetes-validations") or []:
            transition = "oldSelf" in rule["rule"]
            if transition and old_value is None:
                continue
            activation = {"self": _cel(value, node)}
            if transition:
                activation["oldSelf"] = _cel(old_value, node)
            try:
                result = _program(rule["rule"]).evaluate(activation)
            except Exception as exc:  # an evaluation error fails the rule, as in Kubernetes
                result = exc
            if not (isinstance(result, celtypes.BoolType) and bool(result)):
                where = path + rule.get("fieldPath", "")
                out.append(f"{where}: {rule.get('message', rule['rule'])}")
        if isinstance(value, dict):
            for name, sub in (node.get("properties") or {}).items():
                if value.get(name) is not None:
                    old_sub = old_value.get(name) if isinstance(old_value, dict) else None
                    visit(sub, value[name], old_sub, f"{path}.{name}")

    visit(SCHEMA, new, old, "")
    return out


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=EXAMPLE_IDS)
def test_example_passes_every_cel_rule_on_create_and_on_an_unchanged_update(
        name: str, doc: dict[str, Any]) -> None:
    assert cel_violations(doc) == []
    assert cel_violations(doc, old=doc) == []
    unsigned = copy.deepcopy(doc)
    unsigned["spec"].pop("signatures", None)
    assert cel_violations(unsigned) == [], "a request starts without signatures"


REJECTED_BY_CEL: list[tuple[str, str, Mutation, str]] = [
    ("CREATE from an existing object", "CREATE",
     lambda s: s.update(fromDigest="sha256:" + "a" * 64), "fromDigest must be"),
    ("UPDATE from nothing", "UPDATE", lambda s: s.update(fromDigest="none"), "fromDigest must be"),
    ("DELETE that produces something", "DELETE",
     lambda s: s.update(toDigest="sha256:" + "a" * 64), "toDigest must be"),
    ("UPDATE that produces nothing", "UPDATE", lambda s: s.update(toDigest="none"),
     "toDigest must be"),
    ("CREATE naming a live uid", "CREATE",
     lambda s: s["target"].update(uid="6f1c2d3e-0000-4a5b-9c8d-000000000009"), "target.uid"),
    ("UPDATE without a uid", "UPDATE", lambda s: s["target"].update(uid="none"), "target.uid"),
    ("UPDATE without manifest", "UPDATE", lambda s: s.pop("manifest"), "manifest is required"),
    ("CREATE without manifest", "CREATE", lambda s: s.pop("manifest"), "manifest is required"),
    ("DELETE with a manifest", "DELETE",
     lambda s: s.update(manifest={"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": s["target"]["name"]}}),
     "must be absent for DELETE"),
    ("manifest of another object", "UPDATE",
     lambda s: s["manifest"]["metadata"].update(name="other"), "manifest must be the target"),
    ("manifest of another kind", "UPDATE", lambda s: s["manifest"].update(kind="ConfigMap"),
     "manifest must be the target"),
    ("Deployment under v1", "UPDATE", lambda s: s["target"].update(apiVersion="v1"),
     "target.apiVersion must be"),
    ("expiry before issue", "UPDATE", lambda s: s.update(expiresAt="2026-11-23T07:59:59Z"),
     "expiresAt must be after"),
    ("expiry at issue", "UPDATE", lambda s: s.update(expiresAt=s["issuedAt"]),
     "expiresAt must be after"),
    ("canary for a ConfigMap", "CREATE", lambda s: s["rollout"].update(strategy="canary"),
     "canary is only for"),
    ("canary for a DELETE", "DELETE", lambda s: s["rollout"].update(strategy="canary"),
     "canary is only for"),
    ("canary settings on a direct rollout", "UPDATE",
     lambda s: s["rollout"].update(canary={"replicas": 1}), "only allowed with strategy canary"),
]


@pytest.mark.parametrize(("what", "operation", "mutate", "message"), REJECTED_BY_CEL,
                         ids=[r[0] for r in REJECTED_BY_CEL])
def test_cel_rejects_on_create(what: str, operation: str, mutate: Mutation,
                               message: str) -> None:
    doc = example(operation)
    mutate(doc["spec"])
    violations = cel_violations(doc)
    assert any(message in v for v in violations), violations


H = "sha256:" + "b" * 64
IMMUTABLE: list[tuple[str, Mutation]] = [
    ("cluster", lambda s: s.update(cluster="prod-us-1")),
    ("target", lambda s: s["target"].update(uid="6f1c2d3e-0000-4a5b-9c8d-000000000099")),
    ("operation", lambda s: s.update(operation="CREATE")),
    ("fromDigest", lambda s: s.update(fromDigest=H)),
    ("toDigest", lambda s: s.update(toDigest=H)),
    ("changeRecord", lambda s: s["changeRecord"].pop("url")),
    ("requestedBy", lambda s: s.update(requestedBy="bob")),
    ("issuedAt", lambda s: s.update(issuedAt="2026-11-23T07:00:00Z")),
    ("expiresAt", lambda s: s.update(expiresAt="2026-11-23T23:00:00Z")),
    ("rollout", lambda s: s.update(rollout={"strategy": "canary"})),
    ("manifest", lambda s: s["manifest"]["spec"]["template"]["spec"]["containers"][0].update(
        image="registry.example/evil:latest")),
    ("statement", lambda s: s.update(statement="QUFB" + s["statement"][4:])),
]


def test_every_immutable_field_has_an_update_case() -> None:
    # assistance is optional, so its case starts from an object that has it (below).
    assert sorted(f for f, _ in IMMUTABLE) == sorted(set(SPEC_FIELDS) - {"signatures",
                                                                         "assistance"})


@pytest.mark.parametrize(("field", "mutate"), IMMUTABLE, ids=[f for f, _ in IMMUTABLE])
def test_cel_refuses_to_change_after_creation(field: str, mutate: Mutation) -> None:
    old = example("UPDATE")
    new = copy.deepcopy(old)
    mutate(new["spec"])
    assert f".spec.{field}: {field} is immutable" in cel_violations(new, old=old)


def test_cel_refuses_to_change_or_drop_a_declared_assistance() -> None:
    old = example("UPDATE")
    old["spec"]["assistance"] = "ai"
    changed = copy.deepcopy(old)
    changed["spec"]["assistance"] = "none"
    assert ".spec.assistance: assistance is immutable" in cel_violations(changed, old=old)
    dropped = copy.deepcopy(old)
    del dropped["spec"]["assistance"]
    added = example("UPDATE")
    added["spec"]["assistance"] = "ai"
    removed = ".spec.assistance: assistance is immutable (it may not be added or removed)"
    assert removed in cel_violations(dropped, old=old)
    assert removed in cel_violations(added, old=example("UPDATE"))


def test_cel_refuses_to_remove_the_manifest_of_an_update() -> None:
    old = example("UPDATE")
    new = copy.deepcopy(old)
    del new["spec"]["manifest"]
    assert ".spec.manifest: manifest is immutable (it may not be added or removed)" in (
        cel_violations(new, old=old))


def test_cel_lets_metadata_and_signatures_grow() -> None:
    signed = example("UPDATE")
    pending = copy.deepcopy(signed)
    pending["spec"]["signatures"] = []
    assert cel_violations(signed, old=pending) == []
    one = copy.deepcopy(signed)
    one["spec"]["signatures"] = signed["spec"]["signatures"][:1]
    assert cel_violations(signed, old=one) == []
    reordered = copy.deepcopy(signed)
    reordered["spec"]["signatures"].reverse()
    assert cel_violations(reordered, old=signed) == []
    labelled = copy.deepcopy(signed)
    labelled["metadata"]["labels"] = {"team": "payments"}
    assert cel_violations(labelled, old=signed) == []


APPEND_ONLY = "signatures may only be appended"
SIGNATURE_LOSSES: list[tuple[str, Mutation]] = [
    ("one removed", lambda s: s["signatures"].pop()),
    ("all removed", lambda s: s.update(signatures=[])),
    ("the list dropped", lambda s: s.pop("signatures")),
    ("one replaced", lambda s: s["signatures"][0].update(sig=base64.b64encode(b"x" * 64).decode())),
    ("a keyid changed", lambda s: s["signatures"][0].update(keyid="sha256:" + "0" * 64)),
]


@pytest.mark.parametrize(("what", "mutate"), SIGNATURE_LOSSES, ids=[w for w, _ in SIGNATURE_LOSSES])
def test_cel_refuses_signatures_that_are_not_appended(what: str, mutate: Mutation) -> None:
    old = example("UPDATE")
    assert len(old["spec"]["signatures"]) >= 2
    new = copy.deepcopy(old)
    mutate(new["spec"])
    assert any(APPEND_ONLY in v for v in cel_violations(new, old=old)), what
