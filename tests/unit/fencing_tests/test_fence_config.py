"""[fencing] section validation: one problem line per field, naming the host and the device."""

from __future__ import annotations

import os

import pytest

from fencing.config import FencingConfig, parse_fencing_section
from fencing.plugin import discover_plugins
from haagent.config import parse_config
from haagent.errors import ConfigError


@pytest.fixture
def pw(tmp_path):
    path = tmp_path / "pw"
    path.write_text("secret\n")
    path.chmod(0o600)
    return str(path)


def parse(raw):
    problems: list[str] = []
    cfg = parse_fencing_section(raw, "fencing", problems)
    return cfg, problems


def good(pw):
    return {
        "power_timeout": 20,
        "devices": {
            "ipmi-kvm01": {"plugin": "ipmi", "address": "10.0.0.1", "username": "admin", "password_file": pw},
            "pdu-a": {"plugin": "apc_snmp", "address": "10.0.0.200", "community_file": pw},
            "pdu-b": {"plugin": "apc_snmp", "address": "10.0.0.201", "community_file": pw, "power_timeout": 5},
        },
        "hosts": {"kvm01": {"levels": [["ipmi-kvm01"],
                                       [{"device": "pdu-a", "outlet": 3}, {"device": "pdu-b", "outlet": 3}]]}},
    }


def test_absent_section_is_empty():
    cfg, problems = parse(None)
    assert problems == [] and cfg == FencingConfig() and cfg.levels_for("kvm01") == ()


def test_good_config_merges_per_host_options_and_defaults(pw):
    cfg, problems = parse(good(pw))
    assert problems == []
    levels = cfg.levels_for("kvm01")
    assert [[d.name for d in level] for level in levels] == [["ipmi-kvm01"], ["pdu-a", "pdu-b"]]
    ipmi = levels[0][0]
    assert ipmi.options["port"] == 623 and ipmi.options["cipher_suite"] == 3 and ipmi.power_timeout == 20
    assert levels[1][0].options["outlet"] == 3 and levels[1][1].power_timeout == 5


def test_unknown_plugin_named_at_device_and_host(pw):
    raw = good(pw)
    raw["devices"]["pdu-a"]["plugin"] = "apc_snmpp"
    _, problems = parse(raw)
    assert any(p.startswith("fencing.devices.pdu-a.plugin: unknown plugin 'apc_snmpp'") for p in problems)
    assert "fencing.hosts.kvm01.levels[1].pdu-a: unknown plugin 'apc_snmpp'" in problems


def test_missing_required_option(pw):
    raw = good(pw)
    del raw["devices"]["ipmi-kvm01"]["password_file"]
    _, problems = parse(raw)
    assert "fencing.devices.ipmi-kvm01.password_file: is required" in problems
    assert any(p.startswith("fencing.hosts.kvm01.levels[0].ipmi-kvm01: device has errors") for p in problems)


def test_per_host_required_option_named_at_host(pw):
    raw = good(pw)
    raw["hosts"]["kvm01"]["levels"][1][1] = "pdu-b"
    _, problems = parse(raw)
    assert problems == ["fencing.hosts.kvm01.levels[1].pdu-b.outlet: is required "
                        "(set it here or in [fencing.devices.pdu-b])"]


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["devices"]["ipmi-kvm01"].update(password="x"),
     "fencing.devices.ipmi-kvm01.password: secrets are not accepted inline; put it in a file and set password_file"),
    (lambda r: r["devices"]["ipmi-kvm01"].update(port="623"),
     "fencing.devices.ipmi-kvm01.port: must be a number (got '623')"),
    (lambda r: r["devices"]["ipmi-kvm01"].update(cipher_suite=1),
     "fencing.devices.ipmi-kvm01.cipher_suite: must be at least 3 (got 1)"),
    (lambda r: r["devices"]["ipmi-kvm01"].update(password_file="/nonexistent/pw"),
     "fencing.devices.ipmi-kvm01.password_file: /nonexistent/pw does not exist (create it with the secret "
     "and run: chmod 600 /nonexistent/pw)"),
    (lambda r: r["devices"]["ipmi-kvm01"].update(colour="red"),
     "fencing.devices.ipmi-kvm01.colour: unknown option for plugin 'ipmi'"),
    (lambda r: r["hosts"]["kvm01"]["levels"][1].__setitem__(0, {"device": "pdu-a", "outlet": 3, "address": "x"}),
     "fencing.hosts.kvm01.levels[1].pdu-a.address: cannot be set per host; set it in [fencing.devices.pdu-a]"),
    (lambda r: r["hosts"]["kvm01"]["levels"].append(["pdu-c"]),
     "fencing.hosts.kvm01.levels[2].pdu-c: no such device (define [fencing.devices.pdu-c])"),
    (lambda r: r["hosts"]["kvm01"].update(levels=[]),
     "fencing.hosts.kvm01.levels: is required: a list of levels, each a list of devices"),
    (lambda r: r.update(retries=-1), "fencing.retries: must be at least 0 (got -1)"),
])
def test_each_problem_is_one_clear_line(pw, mutate, expected):
    raw = good(pw)
    mutate(raw)
    _, problems = parse(raw)
    assert any(p.startswith(expected) for p in problems), problems


def test_soft_fencing_must_be_followed_or_trusted(pw):
    raw = good(pw)
    raw["devices"]["ssh"] = {"plugin": "ssh", "key_file": pw, "known_hosts": pw}
    raw["hosts"]["kvm01"]["levels"] = [["ssh"]]
    _, problems = parse(raw)
    assert problems and problems[0].startswith("fencing.hosts.kvm01.levels[0]: ssh cannot confirm power-off")
    raw["hosts"]["kvm01"]["levels"] = [["ssh"], ["ipmi-kvm01"]]
    assert parse(raw)[1] == []
    raw["hosts"]["kvm01"]["levels"] = [["ssh"]]
    raw["devices"]["ssh"]["trusted"] = True
    assert parse(raw)[1] == []


def test_whole_config_reports_fencing_problems(pw):
    data = {"cluster": "c1", "host": "kvm01", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "fencing": {"devices": {"x": {"plugin": "nope"}}}}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert any(p.startswith("fencing.devices.x.plugin: unknown plugin 'nope'") for p in err.value.problems)


@pytest.mark.parametrize("mode, access", [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"),
                                          (0o620, "writable"), (0o666, "readable and writable"),
                                          (0o610, "executable")])
def test_a_secret_file_others_can_read_is_refused_naming_the_fix(pw, mode, access):
    os.chmod(pw, mode)
    _, problems = parse(good(pw))
    assert f"fencing.devices.ipmi-kvm01.password_file: {pw} is {access} by group or others " \
           f"(mode {mode:04o}); run: chmod 600 {pw}" in problems


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_secret_files_pass(pw, mode):
    os.chmod(pw, mode)
    assert parse(good(pw))[1] == []


def secret_options():
    return [(name, opt.name) for name, cls in sorted(discover_plugins().items()) for opt in cls.options if opt.secret]


def test_every_plugin_secret_option_is_known():
    """The secret files of the built-in plugins: a new one must be listed here (and so be checked)."""
    assert set(secret_options()) >= {("apc_snmp", "community_file"), ("apc_snmp", "auth_password_file"),
                                     ("apc_snmp", "priv_password_file"), ("fence_agent", "password_file"),
                                     ("ipmi", "password_file"), ("ssh", "key_file")}


@pytest.mark.parametrize("plugin, option", secret_options())
def test_every_secret_file_option_must_be_private(tmp_path, plugin, option):
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    device = {"plugin": plugin, option: str(path), **REQUIRED[plugin]}
    _, problems = parse({"devices": {"d": device}})
    assert f"fencing.devices.d.{option}: {path} is readable by group or others (mode 0644); " \
           f"run: chmod 600 {path}" in problems, problems
    path.chmod(0o600)
    assert not [p for p in parse({"devices": {"d": device}})[1] if p.startswith(f"fencing.devices.d.{option}")]
    missing = tmp_path / "missing"
    device[option] = str(missing)
    assert any(p.startswith(f"fencing.devices.d.{option}: {missing} does not exist")
               for p in parse({"devices": {"d": device}})[1])


REQUIRED = {
    "apc_snmp": {"address": "10.0.0.2", "outlet": 1},
    "fence_agent": {"agent": "fence_ipmilan"},
    "ipmi": {"address": "10.0.0.1", "username": "admin"},
    "ssh": {"known_hosts": "/etc/hostname"},
}


@pytest.mark.parametrize("param,why", [
    ("passwd=hunter2", "passwd: secrets are not accepted inline"),
    ("password=hunter2", "password: secrets are not accepted inline"),
    ("Password=hunter2", "Password: secrets are not accepted inline"),
    ("passwd_script=/bin/echo", "passwd_script: secrets are not accepted inline"),
    ("password-script=/bin/echo", "password-script: secrets are not accepted inline"),
    ("snmp_priv_passwd=hunter2", "snmp_priv_passwd: secrets are not accepted inline"),
    ("community=private", "community: secrets are not accepted inline"),
    ("secret_key=hunter2", "secret_key: secrets are not accepted inline"),  # fence_aws
    ("apikey=hunter2", "apikey: secrets are not accepted inline"),  # fence_ibm_vpc
    ("token=hunter2", "token: secrets are not accepted inline"),  # fence_ibm_powervs
    ("my_secret_thing=hunter2", "my_secret_thing: secrets are not accepted inline"),
    ("action=reboot", "action: the action is chosen by haagent"),
    (" action = reboot", "action: the action is chosen by haagent"),
    ("ACTION=reboot", "ACTION: the action is chosen by haagent"),
    ("option=reboot", "option: the action is chosen by haagent"),
    ("lanplus=1\naction=reboot", "lanplus: a line break or NUL is not allowed"),
    ("lanplus=1\raction=reboot", "lanplus: a line break or NUL is not allowed"),
    ("lanplus=1\0", "lanplus: a line break or NUL is not allowed"),
    ("lan\nplus=1", "'lan\\nplus': a line break or NUL is not allowed"),
    ("lanplus", 'each entry must be "key=value"'),
])
def test_fence_agent_parameters_carry_no_secret_action_or_extra_line(pw, param, why):
    raw = {"devices": {"agent": {"plugin": "fence_agent", "agent": "fence_ipmilan", "ip": "10.0.0.9",
                                 "password_file": pw, "parameters": ["cipher=3", param]}},
           "hosts": {"kvm01": {"levels": [["agent"]]}}}
    _, problems = parse(raw)
    assert any(p.startswith("fencing.devices.agent.parameters: ") and why in p for p in problems), problems
    assert not any("hunter2" in p or "private" in p for p in problems)  # the secret is never echoed
    assert all("\n" not in p and "\r" not in p for p in problems)  # one line per problem


def agent_device(pw, **kw):
    return {"devices": {"agent": {"plugin": "fence_agent", "agent": "fence_ipmilan", "ip": "10.0.0.9",
                                  "password_file": pw, **kw}},
            "hosts": {"kvm01": {"levels": [["agent"]]}}}


@pytest.mark.parametrize("option", ["ip", "username", "plug", "agent"])
def test_fence_agent_options_carry_no_line_break(pw, option):
    _, problems = parse(agent_device(pw, **{option: "x\naction=reboot"}))
    assert f"fencing.devices.agent.{option}: a line break or NUL is not allowed (it would add a line to " \
           "the agent's stdin)" in problems, problems


@pytest.mark.parametrize("key", ["action", "option", "pass word", "x\ny", ""])
def test_fence_agent_secret_key_is_a_plain_key_and_not_the_action(pw, key):
    _, problems = parse(agent_device(pw, secret_key=key))
    assert any(p.startswith("fencing.devices.agent.secret_key: ") for p in problems), problems


def test_fence_agent_accepts_plain_parameters_and_a_private_identity_file(pw):
    assert parse(agent_device(pw, parameters=["lanplus=1", "cipher=3", f"identity_file={pw}", "ssh=1"],
                              secret_key="community"))[1] == []


def test_fence_agent_identity_file_must_be_private(pw, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    key.chmod(0o640)
    _, problems = parse(agent_device(pw, parameters=[f"identity_file={key}"]))
    assert f"fencing.devices.agent.parameters: identity_file: {key} is readable by group or others " \
           f"(mode 0640); run: chmod 600 {key}" in problems, problems
