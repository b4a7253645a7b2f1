"""The HTTP contract around decide(): bad bodies get 400/413 and the service keeps serving;
a broken trust store keeps the replica ready but denying; a bad setting stops the start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import write_state
from tests.support import fixture, trust_yaml


async def test_malformed_json_is_a_400_with_a_reason_and_the_next_request_works(
        static_server, client):
    async with client.post(static_server.url, data=b'{"apiVersion": ') as response:
        assert response.status == 400
        assert "malformed JSON" in await response.text()
    async with client.post(static_server.url, json=fixture("deployment-update")) as response:
        assert response.status == 200
        assert (await response.json())["response"]["allowed"] is False


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda r: r.update(apiVersion="admission.k8s.io/v1beta1"), "expected apiVersion"),
    (lambda r: r.update(kind="Review"), "kind AdmissionReview"),
    (lambda r: r.pop("request"), "request is missing"),
    (lambda r: r["request"].pop("uid"), "request.uid"),
    (lambda r: r["request"].pop("userInfo"), "userInfo"),
    (lambda r: r["request"].update(operation="PATCH"), "operation"),
])
async def test_a_body_that_is_no_admission_review_is_a_400_naming_the_problem(
        static_server, client, mutate, reason):
    review = fixture("deployment-update")
    mutate(review)
    async with client.post(static_server.url, json=review) as response:
        assert response.status == 400
        assert reason in await response.text()


async def test_an_oversized_body_is_refused_with_413_and_the_service_keeps_serving(
        tmp_path, start_server, client):
    server = start_server("--static", str(write_state(tmp_path / "s")),
                          "--max-body-bytes", "4096")
    body = json.dumps(fixture("deployment-update")).encode()
    assert len(body) > 4096
    async with client.post(server.url, data=body) as response:
        assert response.status == 413

    async def chunks():  # no Content-Length: the limit must hold while reading, too
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    async with client.post(server.url, data=chunks()) as response:
        assert response.status == 413
    small = fixture("deployment-delete")
    small["request"]["oldObject"]["metadata"].pop("managedFields", None)
    small["request"]["oldObject"]["metadata"]["annotations"] = {}
    small["request"]["options"] = None
    assert len(json.dumps(small)) < 4096
    async with client.post(server.url, json=small) as response:
        assert response.status == 200
        assert (await response.json())["response"]["uid"] == small["request"]["uid"]


async def test_only_post_validate_is_served_and_expect_100_continue_gets_its_answer(
        static_server, client):
    """The HTTPS port has one route; the API server's `?timeout=` query and a client's
    `Expect: 100-continue` are served, an unknown Expect is refused."""
    base = static_server.url.removesuffix("/validate")
    async with client.get(static_server.url) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
    async with client.post(base + "/validate/", json=fixture("deployment-update")) as response:
        assert response.status == 404
    async with client.post(static_server.url + "?timeout=10s", json=fixture("deployment-update"),
                           expect100=True) as response:  # the API server adds ?timeout=
        assert response.status == 200
        answer = (await response.json())["response"]
        assert answer["uid"] == fixture("deployment-update")["request"]["uid"]
        assert answer["allowed"] is False
    async with client.post(static_server.url, data=b"{}",
                           headers={"Expect": "something-else"}) as response:
        assert response.status == 417


def configmap_update(text: str, user_groups: list[str]) -> dict:
    review = fixture("configmap-update")
    req = review["request"]
    req["namespace"] = req["object"]["metadata"]["namespace"] = "changegate"
    req["oldObject"]["metadata"]["namespace"] = "changegate"
    req["name"] = req["object"]["metadata"]["name"] = "changegate-trust"
    req["oldObject"]["metadata"]["name"] = "changegate-trust"
    req["oldObject"]["data"] = {"approvers.yaml": "approvers: [{broken"}
    req["object"]["data"] = {"approvers.yaml": text}
    req["userInfo"] = {"username": "pat", "groups": [*user_groups, "system:authenticated"]}
    return review


async def test_an_invalid_trust_store_keeps_the_replica_ready_denying_until_it_is_fixed(
        tmp_path, start_server, client):
    state = write_state(tmp_path / "s", trust="approvers: [{broken")
    server = start_server("--static", str(state), "--policy-admin-groups", "platform-admins")
    status, text = server.get("/readyz")
    assert status == 200 and "configuration invalid" in text
    async with client.post(server.url, json=fixture("deployment-update")) as response:
        answer = (await response.json())["response"]
    assert answer["allowed"] is False
    assert "configuration invalid" in answer["status"]["message"]
    assert answer["auditAnnotations"]["decision"] == "error:config_invalid"
    dry = fixture("deployment-update-dryrun")  # a fault is never turned into a warning
    async with client.post(server.url, json=dry) as response:
        assert (await response.json())["response"]["allowed"] is False
    # The config guard still judges the fix: a policy admin's valid trust store goes in...
    async with client.post(server.url, json=configmap_update(trust_yaml(),
                                                             ["platform-admins"])) as response:
        fix = (await response.json())["response"]
    assert fix["allowed"] is True, fix
    # ...while the same fix by someone else, or a broken one by the admin, does not.
    async with client.post(server.url, json=configmap_update(trust_yaml(), ["devs"])) as r:
        assert (await r.json())["response"]["allowed"] is False
    async with client.post(server.url, json=configmap_update("approvers: 3",
                                                             ["platform-admins"])) as r:
        broken = (await r.json())["response"]
    assert broken["allowed"] is False
    # A rule refusing bad input, not a webhook fault ("webhook denying on errors").
    assert broken["auditAnnotations"]["decision"] == "denied:config_guard"
    _, metrics = server.get("/metrics")
    # The fix went in; the two refused writes loosened nothing (SPEC §8, `allowed`).
    counted = {(f.labels["config"], f.labels["loosened"], f.labels["allowed"]): f.value
               for family in text_string_to_metric_families(metrics)
               for f in family.samples if f.name == "changegate_config_changes_total"}
    assert counted == {("trust", "true", "true"): 1.0, ("trust", "true", "false"): 2.0}
    assert "changegate_config_valid 0.0" in metrics


def test_sigterm_stops_the_server_cleanly(tmp_path, start_server):
    server = start_server("--static", str(write_state(tmp_path / "s")))
    assert server.stop() == 0
    assert any(r.get("msg") == "stopping" for r in server.log_records())


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["--deadline-seconds", "0"], {}, "--deadline-seconds: must be a number"),
    (["--max-body-bytes", "lots"], {}, "--max-body-bytes: must be an integer"),
    ([], {"CHANGEGATE_DEADLINE_SECONDS": "99"}, "$CHANGEGATE_DEADLINE_SECONDS"),
    (["--namespace", "Not_A_Namespace"], {}, "is not a namespace name"),
    (["--operator-service-account", "bob"], {}, "system:serviceaccount:"),
    (["--config", "CONFIG"], {}, "unknown setting 'deadline'"),
    (["--static", "/nonexistent/dir"], {}, "not a directory"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(tmp_path, ca, args, env, needle):
    cert, key, _ = ca.issue(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"deadline": 3}))
    args = [str(tmp_path / "config.yaml") if a == "CONFIG" else a for a in args]
    if "--static" not in args:
        args += ["--static", str(write_state(tmp_path / "s"))]
    proc = subprocess.run([sys.executable, "-m", "changegate", "serve", "--tls-cert", str(cert),
                           "--tls-key", str(key), "--port", "0", "--metrics-port", "0", *args],
                          capture_output=True, text=True, timeout=30,
                          env={**__import__("os").environ, **env})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_certificate_and_key_that_do_not_match_stop_the_start(tmp_path, ca):
    cert, _, _ = ca.issue(tmp_path / "a")
    _, other_key, _ = ca.issue(tmp_path / "b")
    proc = subprocess.run([sys.executable, "-m", "changegate", "serve", "--tls-cert", str(cert),
                           "--tls-key", str(other_key), "--static",
                           str(write_state(tmp_path / "s"))],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "not a matching PEM certificate and key" in proc.stderr
