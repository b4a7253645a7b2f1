"""Process configuration (docs/contracts.md): file < CHANGEGATE_* env < flags, all validated."""

from __future__ import annotations

import pytest
import yaml

from changegate.config import ConfigError, env_name, load_config


def test_defaults_follow_the_contract():
    config = load_config(env={})
    p = config.process
    assert (p.namespace, p.trust_configmap, p.policy_configmap) == (
        "changegate", "changegate-trust", "changegate-policy")
    assert p.operator_service_account == "system:serviceaccount:changegate:changegate-operator"
    assert p.policy_admin_groups == frozenset() and p.break_glass_groups == frozenset()
    assert config.deadline_seconds == 4.0 and config.max_body_bytes == 3145728


def test_the_pod_namespace_is_the_default_namespace_and_names_the_operator():
    config = load_config(env={"POD_NAMESPACE": "gate"})
    assert config.process.namespace == "gate"
    assert config.process.operator_service_account == \
        "system:serviceaccount:gate:changegate-operator"


def test_env_names_are_the_keys_in_upper_snake_case():
    assert env_name("trustConfigMap") == "CHANGEGATE_TRUST_CONFIG_MAP"
    assert env_name("maxBodyBytes") == "CHANGEGATE_MAX_BODY_BYTES"


def test_flags_beat_env_which_beats_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"namespace": "from-file", "deadlineSeconds": 3,
                                    "policyAdminGroups": ["file-admins"], "maxBodyBytes": 4096}))
    env = {"CHANGEGATE_NAMESPACE": "from-env", "CHANGEGATE_DEADLINE_SECONDS": "2.5",
           "CHANGEGATE_POLICY_ADMIN_GROUPS": "a, b"}
    config = load_config(str(path), env=env, flags={"namespace": "from-flag"})
    assert config.process.namespace == "from-flag"
    assert config.deadline_seconds == 2.5
    assert config.process.policy_admin_groups == {"a", "b"}
    assert config.max_body_bytes == 4096


@pytest.mark.parametrize(("doc", "needle"), [
    ({"deadline": 3}, "unknown setting 'deadline'"),
    ({"deadlineSeconds": 31}, "deadlineSeconds: must be a number of seconds"),
    ({"deadlineSeconds": True}, "deadlineSeconds: must be a number"),
    ({"maxBodyBytes": 10}, "maxBodyBytes: must be an integer"),
    ({"maxBodyBytes": 1.5e6}, "maxBodyBytes: must be an integer"),
    ({"policyAdminGroups": [""]}, "policyAdminGroups: must be a list of non-empty strings"),
    ({"breakGlassGroups": 7}, "breakGlassGroups: must be a list"),
    ({"trustConfigMap": "Bad_Name"}, "is not a ConfigMap name"),
    ({"operatorServiceAccount": "operator"}, "system:serviceaccount:<ns>:<name>"),
    ([1, 2], "the top level must be a mapping"),
])
def test_a_bad_file_setting_is_one_line_naming_it(tmp_path, doc, needle):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), env={})
    message = str(caught.value)
    assert needle in message and "\n" not in message
    assert str(path) in message


def test_a_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.yaml"), env={})
    (tmp_path / "bad.yaml").write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"), env={})


def test_a_bad_env_setting_names_the_variable():
    with pytest.raises(ConfigError, match=r"\$CHANGEGATE_MAX_BODY_BYTES"):
        load_config(env={"CHANGEGATE_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigError, match=r"\$POD_NAMESPACE"):
        load_config(env={"POD_NAMESPACE": "Bad"})
