"""The webhook's serving certificate, from each of its three sources."""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .rendering import NAMESPACE, ci_values, merged, notes, objects, one

CI_VALUES = ci_values()
DEFAULT = CI_VALUES["default-values.yaml"]
SERVICE_DNS = f"changegate-webhook.{NAMESPACE}.svc"


def _cert(b64):
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def _tls_volume(objs):
    spec = one(objs, "Deployment", "changegate-webhook")["spec"]["template"]["spec"]
    return next(v for v in spec["volumes"] if v["name"] == "tls")["secret"]["secretName"]


def test_chart_made_certificate_is_signed_by_the_ca_the_api_server_trusts():
    objs = objects(DEFAULT)
    secret = one(objs, "Secret", "changegate-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    ca, leaf = _cert(secret["data"]["ca.crt"]), _cert(secret["data"]["tls.crt"])
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SERVICE_DNS in names.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for entry in one(objs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert entry["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert _tls_volume(objs) == "changegate-webhook-tls"


def test_chart_made_key_belongs_to_the_certificate():
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    secret = one(objects(DEFAULT), "Secret", "changegate-webhook-tls")
    key = load_pem_private_key(base64.b64decode(secret["data"]["tls.key"]), password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == _cert(
        secret["data"]["tls.crt"]).public_key().public_numbers()


def test_offline_renders_make_new_certificates_which_notes_explain():
    first = one(objects(DEFAULT), "Secret", "changegate-webhook-tls")["data"]["ca.crt"]
    second = one(objects(DEFAULT), "Secret", "changegate-webhook-tls")["data"]["ca.crt"]
    assert first != second  # lookup finds nothing offline: the `helm template` caveat
    assert "helm template" in notes(DEFAULT)


def test_cert_manager_issues_and_injects_the_certificate():
    objs = objects(CI_VALUES["certmanager-values.yaml"])
    assert "Secret" not in {o["kind"] for o in objs}
    issuers = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Issuer"}
    assert issuers == {"changegate-selfsigned": {"selfSigned": {}},
                       "changegate-ca": {"ca": {"secretName": "changegate-webhook-ca"}}}
    ca = one(objs, "Certificate", "changegate-webhook-ca")["spec"]
    assert ca["isCA"] is True
    assert ca["issuerRef"]["name"] == "changegate-selfsigned"
    serving = one(objs, "Certificate", "changegate-webhook-tls")["spec"]
    assert serving["secretName"] == "changegate-webhook-tls"
    assert serving["issuerRef"] == {"name": "changegate-ca", "kind": "Issuer",
                                    "group": "cert-manager.io"}
    assert SERVICE_DNS in serving["dnsNames"]
    vwc = one(objs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/changegate-webhook-tls")
    for entry in vwc["webhooks"]:
        assert "caBundle" not in entry["clientConfig"]
    assert _tls_volume(objs) == "changegate-webhook-tls"
    assert "helm template" not in notes(CI_VALUES["certmanager-values.yaml"])


def test_an_existing_secret_is_mounted_and_its_ca_trusted():
    values = CI_VALUES["ha-values.yaml"]
    objs = objects(values)
    assert "Secret" not in {o["kind"] for o in objs}
    assert "Certificate" not in {o["kind"] for o in objs}
    assert _tls_volume(objs) == values["tls"]["existingSecret"]
    for entry in one(objs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert entry["clientConfig"]["caBundle"] == values["webhook"]["caBundle"]


def test_notes_tell_the_next_steps():
    text = notes(DEFAULT)
    assert "kubectl label namespace payments tier=tier-1" in text
    assert "changegate onboard payments --mode warn" in text
    assert "trust store is empty" in text
    assert "trustStore:" in text
    assert "changegate request" in text and "changegate approve" in text
    assert "kubectl delete validatingwebhookconfiguration" not in text  # the pre-delete Job
    external = notes(ci_values()["externalurl-values.yaml"])
    assert "kubectl delete validatingwebhookconfiguration changegate" in external
    with_approvers = notes(merged(CI_VALUES["ha-values.yaml"]))
    assert "trust store is empty" not in with_approvers
