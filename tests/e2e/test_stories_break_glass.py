"""Story 6: break-glass. dana (sre-oncall) changes a tier-1 Deployment without approvals by
adding a fresh `changegate.io/break-glass` reason in the same write: admitted, loudly. The
annotation left in place grants nothing to the next change; nobody outside the group can use
it; `changegate break-glass` does the same in one command.
"""

from __future__ import annotations

from pathlib import Path

from .stories import BREAK_GLASS_GROUP, Gate, deployment, write_manifest

pytest_plugins = ["tests.e2e.stories"]  # the `gate` fixture: one serve for every story

BREAK_GLASS = "changegate.io/break-glass"


def image(gate: Gate, ns: str) -> str:
    return gate.get("deployment", "checkout", ns)["spec"]["template"]["spec"]["containers"][0][
        "image"]


def test_break_glass_admits_one_change_and_the_annotation_left_in_place_grants_nothing(
        gate: Gate, tmp_path: Path):
    ns = gate.namespace("s6-glass", deployment("checkout", "1.41.0"))

    # The reason alone changes nothing the digest covers: admitted as no change, no
    # break-glass (nothing was changed under it).
    r = gate.kubectl("dana", "annotate", "--overwrite", "deploy/checkout", "-n", ns,
                     f'{BREAK_GLASS}=INC-1 rollback')
    assert r.rc == 0, r.text
    assert "BREAK-GLASS" not in r.err
    assert gate.decision(namespace=ns, name="checkout", user="dana")["reason"] == "no_change"
    # ...and, left in place, it grants nothing to the change that follows.
    r = gate.kubectl("dana", "set", "image", "deploy/checkout",
                     "checkout=registry.example/checkout:1.40.3", "-n", ns)
    assert r.rc == 1, r.text
    assert "reason: no_approval" in r.err
    assert image(gate, ns).endswith(":1.41.0")

    # A fresh reason together with the change: admitted, with the warning.
    rollback = write_manifest(tmp_path / "rollback.yaml", deployment(
        "checkout", "1.40.3", annotations={BREAK_GLASS: "INC-1 rollback: checkout 5xx at 40%"}))
    r = gate.kubectl("dana", "apply", "-n", ns, "-f", str(rollback))
    assert r.rc == 0, r.text
    assert ("Warning: changegate: BREAK-GLASS by dana: INC-1 rollback: checkout 5xx at 40% "
            "(recorded; a review is owed)") in r.err
    assert image(gate, ns).endswith(":1.40.3")
    logged = gate.decision(namespace=ns, name="checkout", user="dana", decision="allowed",
                           reason="break_glass")
    assert logged["breakGlass"] is True
    assert BREAK_GLASS_GROUP in logged["groups"]

    # The same annotation, still there, grants nothing to dana's next change...
    r = gate.kubectl("dana", "set", "image", "deploy/checkout",
                     "checkout=registry.example/checkout:1.40.4", "-n", ns)
    assert r.rc == 1, r.text
    assert image(gate, ns).endswith(":1.40.3")
    # ...and a fresh one grants nothing to someone outside the break-glass group.
    other = write_manifest(tmp_path / "alice.yaml", deployment(
        "checkout", "1.43.0", annotations={BREAK_GLASS: "INC-2 I am in a hurry"}))
    r = gate.kubectl("alice", "apply", "-n", ns, "-f", str(other))
    assert r.rc == 1, r.text
    assert "BREAK-GLASS" not in r.err
    assert image(gate, ns).endswith(":1.40.3")


def test_changegate_break_glass_scale_as_documented(gate: Gate):
    """SPEC §10's form, `changegate break-glass --reason ... scale deployment/NAME --replicas
    N`, with -n where kubectl users put it: at the end."""
    ns = gate.namespace("s6-cli", deployment("checkout", "1.41.0", replicas=3))
    r = gate.changegate("dana", "break-glass", "--reason", "INC-7 shed load", "scale",
                        "deployment/checkout", "--replicas", "2", "-n", ns)
    assert r.rc == 0, r.text
    assert "deployment/checkout patched under break-glass: INC-7 shed load" in r.out
    live = gate.get("deployment", "checkout", ns)
    assert live["spec"]["replicas"] == 2
    assert live["metadata"]["annotations"][BREAK_GLASS].startswith("INC-7 shed load @ ")
    logged = gate.decision(namespace=ns, name="checkout", user="dana", reason="break_glass")
    assert logged["decision"] == "allowed"
    # Each use stamps a fresh reason, so a second one is admitted too...
    again = gate.changegate("dana", "break-glass", "--reason", "INC-7 shed more", "-n", ns,
                            "scale", "deployment/checkout", "--replicas", "1")
    assert again.rc == 0, again.text
    assert gate.get("deployment", "checkout", ns)["spec"]["replicas"] == 1
    # ...but not for someone outside the group.
    alice = gate.changegate("alice", "break-glass", "--reason", "INC-8 me too", "scale",
                            "deployment/checkout", "--replicas", "0", "-n", ns)
    assert alice.rc == 2, alice.text
    assert "API server answered 403" in alice.err
    assert gate.get("deployment", "checkout", ns)["spec"]["replicas"] == 1


def test_changegate_break_glass_subcommands_have_help(gate: Gate):
    """SPEC §10: every command has --help (no cluster, no --reason needed to read it)."""
    for sub in ("scale", "rollback", "pause"):
        r = gate.changegate("dana", "break-glass", sub, "--help")
        assert r.rc == 0, r.text
        assert "Usage: changegate break-glass" in r.out
