"""`request -f -` (a render piped in) and `request --to-dir DIR --key` (approvals kept in Git):
the files are the ChangeApprovals request would create, signed by the requester, and
nothing is created in the cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from changegate.cli.workflow_common import load_signing_key
from changegate.core.compose import statement_bytes
from changegate.core.dsse import PAYLOAD_TYPE, b64decode, pae
from changegate.files import load_documents
from tests.cli.conftest import NS


def test_request_reads_a_render_from_standard_input(kube, cg, manifests):
    result = cg("alice", "request", "-f", "-", "--record", "CHG-31",
                input=manifests.read_text())
    assert result.code == 0, result.err
    assert sorted(n for (p, _, n) in kube.store if p == "changeapprovals") == [
        "chg-31-configmap-checkout-config", "chg-31-deployment-checkout"]


def test_to_dir_writes_signed_files_and_creates_nothing(kube, cg, manifests, keys, tmp_path):
    out = tmp_path / "approvals"
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-32",
                "--to-dir", str(out), "--key", keys["alice"])
    assert result.code == 0, result.err
    assert "nothing created in the cluster" in result.out
    assert [n for (p, _, n) in kube.store if p == "changeapprovals"] == []
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{NS}.chg-32-configmap-checkout-config.yaml",
                                       f"{NS}.chg-32-deployment-checkout.yaml"]
    for f in files:
        [ca] = load_documents(f)
        assert ca["spec"]["requestedBy"] == "alice"
        [sig] = ca["spec"]["signatures"]
        public = load_signing_key(keys["alice"]).public
        assert sig["keyid"] == public.keyid
        assert public.verify(b64decode(sig["sig"]), pae(PAYLOAD_TYPE, statement_bytes(ca)))
    # A second run never overwrites a file that may already carry signatures.
    again = cg("alice", "request", "-f", str(manifests), "--record", "CHG-32",
               "--to-dir", str(out), "--key", keys["alice"])
    assert again.code != 0 and "exists" in again.err


def test_to_dir_needs_a_key(cg, manifests, tmp_path):
    result = cg("alice", "request", "-f", str(manifests), "--record", "CHG-33",
                "--to-dir", str(tmp_path / "a"))
    assert result.code == 2 and "--to-dir needs --key" in result.err


def test_offline_approve_recognises_an_autoscaled_deployment_by_its_digest(cg, keys, tmp_path):
    """The request left replicas out (an HPA targets the Deployment); offline there is no HPA
    to look at, so the digest says so. A manifest edited elsewhere is still refused."""
    import yaml as _yaml

    from changegate.core.compose import change_approval
    from changegate.core.digest import digest
    from tests.cli.conftest import release

    manifest = {**release()[0], "metadata": {**release()[0]["metadata"], "namespace": NS}}
    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

    def file(to_digest: str, name: str) -> str:
        ca = change_approval(
            namespace=NS, name=name, cluster="prod-eu-1",
            target={"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                    "uid": "u-1"}, operation="UPDATE", from_digest="sha256:" + "1" * 64,
            to_digest=to_digest, record_id="CHG-34", record_url=None, requested_by="alice",
            issued_at=now, expires_at=now + timedelta(hours=4), manifest=manifest,
            nonce=f"00000000-0000-4000-8000-{len(name):012d}")
        path = tmp_path / f"{name}.yaml"
        path.write_text(_yaml.safe_dump(ca))
        return str(path)

    auto = cg("bob", "approve", "-f", file(digest(manifest, autoscaled=True), "auto"),
              "--key", keys["bob"], "--yes")
    assert auto.code == 0, auto.err
    assert "autoscaled, replicas are not part of what you sign" in auto.out
    other = dict(manifest, spec={**manifest["spec"], "paused": True})
    bad = cg("bob", "approve", "-f", file(digest(other, autoscaled=True), "bad"),
             "--key", keys["bob"], "--yes")
    assert bad.code != 0 and "refusing to sign" in bad.err
