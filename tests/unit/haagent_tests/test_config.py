"""Config validation: every bad field gets one line naming it, and the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from haagent.config import TIMING_PRESETS, TimingConfig, load_config, parse_config
from haagent.errors import ConfigError

GOOD = {
    "cluster": "prod-a",
    "host": "kvm01",
    "etcd": {"endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]},
}


def with_(**sections):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def without(key):
    return {k: v for k, v in GOOD.items() if k != key}


BAD = [
    (without("cluster"), "cluster: is required"),
    (with_(host="KVM 01"), "host: must be lowercase letters, digits, '.', '_' or '-' (got 'KVM 01')"),
    (with_(etcd={"endpoints": []}), "etcd.endpoints: must list at least one endpoint"),
    (with_(etcd={"endpoints": "http://10.0.0.1:2379"}), "etcd.endpoints: must be a list of strings (got 'http://10.0.0.1:2379')"),
    (with_(etcd={"endpoints": ["10.0.0.1:2379"]}), "etcd.endpoints[0]: must start with http://, https://, unix:// or unixs:// (got '10.0.0.1:2379')"),
    (with_(etcd={"endpoints": ["http://10.0.0.1"]}), "etcd.endpoints[0]: must name a host and a port, like http://10.0.0.1:2379 (got 'http://10.0.0.1')"),
    (with_(etcd={"endpoints": ["http://a:1", "http://a:1"]}), "etcd.endpoints: lists the same endpoint twice"),
    (with_(etcd={"endpoints": ["https://a:1"]}), "etcd.ca_cert: is required when an endpoint uses https:// or unixs://"),
    (with_(etcd={"ca_cert": "/nonexistent/ca.pem"}), "etcd.ca_cert: file not found or not readable: /nonexistent/ca.pem"),
    (with_(etcd={"cert": "/nonexistent/h1.crt", "key": "/nonexistent/h1.key"}),
     "etcd.cert: file not found or not readable: /nonexistent/h1.crt"),
    (with_(etcd={"cert": "/nonexistent/h1.crt", "key": "/nonexistent/h1.key"}),
     "etcd.key: /nonexistent/h1.key does not exist (create it with the secret and run: chmod 600 /nonexistent/h1.key)"),
    (with_(etcd={"users": {"alice": "haagent-opertor"}}),
     "etcd.users.alice: unknown role 'haagent-opertor' (roles: haagent-agent, haagent-operator, haagent-reader)"),
    (with_(etcd={"users": {"root": "haagent-agent"}}),
     "etcd.users.root: is etcd's own root user, created by setup-rbac; use another CN"),
    (with_(etcd={"users": ["alice"]}), "etcd.users: must be a table of certificate CN = role"),
    (with_(etcd={"timeout": 0}), "etcd.timeout: must be greater than 0 (got 0)"),
    (with_(timing={"heartbeat_interval": 1.0, "lease_ttl": 1.0}), "timing.lease_ttl: must be greater than 2 x heartbeat_interval (got 1.0)"),
    (with_(timing={"lease_ttl": 2.5}), "timing.lease_ttl: must be a whole number of seconds: etcd leases are whole seconds (got 2.5)"),
    (with_(timing={"heartbeat_interval": "1s"}), "timing.heartbeat_interval: must be a number (got '1s')"),
    (with_(timing={"fence_delay": -1}), "timing.fence_delay: must be at least 0 (got -1)"),
    (with_(timing={"preset": "quick"}), "timing.preset: must be one of fast, default, conservative (got 'quick')"),
    (with_(timing={"new_leader_grace": -1}), "timing.new_leader_grace: must be at least 0 (got -1)"),
    (with_(timing={"lease_tll": 3}), "timing.lease_tll: unknown key"),
    (with_(libvirt={"uri": "qemu"}), "libvirt.uri: must be a libvirt URI like qemu:///system (got 'qemu')"),
    (with_(metrics={"listen": "9464"}), "metrics.listen: must be HOST:PORT, like 127.0.0.1:9464 (got '9464')"),
    (with_(metrics={"listen": "nohost:9464"}), "metrics.listen: not an IP address (got 'nohost:9464')"),
    (with_(log={"format": "xml"}), "log.format: must be one of auto, json, console (got 'xml')"),
    (with_(etcd=5), "etcd: must be a table (got int)"),
    (with_(clutser="x"), "clutser: unknown key"),
    (with_(etcd={"timeout": 2.0}, timing={"lease_ttl": 3}), "etcd.timeout: must be at most timing.lease_ttl / 3 (1.00s), so a stuck "
                                   "refresh is retried before the lease expires (got 2.0)"),
    (with_(agent={"watchdog": True}), "agent.watchdog_device: is required when watchdog = true (e.g. /dev/watchdog): "
                                      "without a device nothing resets this host, and the leader would wrongly "
                                      "presume it did"),
    (with_(agent={"watchdog": True, "watchdog_device": "/dev/watchdog", "self_fence_timeout": 4.5}),
     "agent.self_fence_timeout: must be a whole number of seconds with watchdog = true: the device is set to it (got 4.5)"),
    (with_(agent={"shutdown_policy": "fence"}), "agent.shutdown_policy: must be one of freeze (got 'fence')"),
    (with_(agent={"image_dirs": ["images"]}), "agent.image_dirs[0]: must be an absolute path (got 'images')"),
    (with_(agent={"image_dirs": ["/var/../"]}), "agent.image_dirs[0]: must not be / (every host file would be allowed)"),
    (with_(agent={"metadata_namespaces": ["libosinfo"]}),
     "agent.metadata_namespaces[0]: must be an XML namespace URI like "
     "http://libosinfo.org/xmlns/libvirt/domain/1.0 (got 'libosinfo')"),
    (with_(timing={"lease_ttl": 6}, agent={"watchdog": True, "watchdog_device": "/dev/watchdog", "self_fence_timeout": 5}),
     "agent.self_fence_timeout: must be at least timing.lease_ttl (6) with watchdog = true: the device is fed "
     "on each lease renewal, so a shorter timeout resets a healthy host whenever etcd stalls although its "
     "lease is still alive (got 5)"),
    (with_(migration={"max_outgoing": 0}), "migration.max_outgoing: must be at least 1 (got 0)"),
    (with_(migration={"max_cluster": "8"}), "migration.max_cluster: must be a number (got '8')"),
    (with_(migration={"order": "smallest"}), "migration.order: must be one of largest, name (got 'smallest')"),
    (with_(migration={"uri": "qemu+tls://kvm01/system"}),
     "migration.uri: must be a libvirt URI naming {host}, like qemu+tls://{host}/system (got 'qemu+tls://kvm01/system')"),
    (with_(migration={"max_parallel": 2}), "migration.max_parallel: unknown key"),
    (with_(migration={"bandwidth_cap": -5}), "migration.bandwidth_cap: must be at least 0 (got -5)"),
    (with_(migration={"max_downtime_ms": 12.5}), "migration.max_downtime_ms: must be a whole number (got 12.5)"),
    (with_(migration={"auto_converge": "yes"}), "migration.auto_converge: must be true or false (got 'yes')"),
    (with_(migration={"postcopy_after_precopy": True}),
     "migration.postcopy_after_precopy: needs postcopy = true (it says when to switch to post-copy)"),
    (with_(migration={"cold_shutdown_timeout": 0}), "migration.cold_shutdown_timeout: must be greater than 0 (got 0)"),
    (with_(migration={"cold_start_timeout": 5}), "migration.cold_start_timeout: must be at least 10 (got 5)"),
    (with_(agent={"shared_paths": ["nfs/vms"]}), "agent.shared_paths[0]: must be an absolute path (got 'nfs/vms')"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_config_names_the_field(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in err.value.problems, err.value.problems


def test_a_certificate_must_be_valid_now(tmp_path):
    import datetime as dt

    from haagent.store.pki import CertificateAuthority

    ca = CertificateAuthority(tmp_path)
    ended = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).replace(second=0, microsecond=0)
    old = ca.issue("old", "h1", not_before=ended - dt.timedelta(days=30), not_after=ended)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as err:
        parse_config(with_(etcd={"ca_cert": str(junk), "cert": str(old.cert), "key": str(old.key)}))
    assert err.value.problems == [f"etcd.ca_cert: {junk} is not a PEM certificate",
                                  f"etcd.cert: certificate {old.cert} expired on {ended:%Y-%m-%d %H:%M} UTC"]


def test_etcd_users_map_certificate_names_to_roles():
    cfg = parse_config(with_(etcd={"users": {"kvm1": "haagent-agent", "grafana": "haagent-reader"}}))
    assert cfg.etcd.users == (("grafana", "haagent-reader"), ("kvm1", "haagent-agent"))


def test_every_problem_is_reported_not_just_the_first():
    data = with_(timing={"fence_delay": -1, "heartbeat_interval": "x"}, log={"level": "loud"})
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert len(err.value.problems) == 3


def test_good_config_has_defaults():
    cfg = parse_config(GOOD)
    assert cfg.timing == TimingConfig()  # the default preset
    assert (cfg.timing.preset, cfg.timing.lease_ttl, cfg.timing.fence_delay) == ("default", 2, 0.0)
    assert cfg.etcd.timeout == 0.666  # follows the TTL: a stuck refresh is retried before the lease runs out
    assert [e.port for e in cfg.etcd.endpoints] == [2379, 2379]
    with pytest.raises(AttributeError):
        cfg.host = "other"  # frozen


def test_migration_tuning_defaults_to_qemus_own():
    assert (parse_config(GOOD).migration.max_downtime_ms, parse_config(GOOD).migration.auto_converge) == (0, False)
    mig = parse_config(with_(migration={"max_downtime_ms": 100, "auto_converge": True})).migration
    assert (mig.max_downtime_ms, mig.auto_converge) == (100, True)


def test_shared_storage_and_the_cold_start_deadline():
    cfg = parse_config(GOOD)
    assert cfg.agent.shared_paths == () and cfg.migration.cold_start_deadline() == 60.0
    cfg = parse_config(with_(agent={"shared_paths": ["/mnt/vms", "/dev/mapper"]}, migration={"cold_start_timeout": 30}))
    assert cfg.agent.shared_paths == ("/mnt/vms", "/dev/mapper") and cfg.migration.cold_start_deadline() == 30.0


def test_unix_endpoint_form():
    cfg = parse_config(with_(etcd={"endpoints": ["unix:///run/lab/h1/localhost:23790"]}))
    ep = cfg.etcd.endpoints[0]
    assert (ep.scheme, ep.host, ep.port) == ("unix", "unix:/run/lab/h1/localhost", 23790)


def test_example_config_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[3] / "deploy" / "haagent.toml.example")
    assert cfg.cluster and cfg.host


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "haagent.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_config_cli_exit_codes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('cluster = "c"\nhost = "h"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n')
    assert run_cli("check-config", "--config", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('cluster = "c"\nhost = "h"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
                   '[timing]\nheartbeat_interval = 1.0\nlease_ttl = 1.0\n')
    r = run_cli("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert "timing.lease_ttl: must be greater than 2 x heartbeat_interval (got 1.0)" in r.stderr.splitlines()
    assert "Traceback" not in r.stderr
    missing = run_cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_status_validates_config_first(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('cluster = "c"\n')
    r = run_cli("status", "--config", str(bad))
    assert r.returncode == 2 and "host: is required" in r.stderr


def test_status_without_etcd_says_so_in_one_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('cluster = "c"\nhost = "h"\n[etcd]\nendpoints = ["http://127.0.0.1:1"]\ntimeout = 0.3\n')
    r = run_cli("status", "--config", str(cfg))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot reach etcd" in r.stderr and "Traceback" not in r.stderr


def test_a_key_file_others_can_read_is_refused_naming_the_fix(tmp_path):
    from haagent.store.pki import CertificateAuthority

    files = CertificateAuthority(tmp_path).issue("agent", "h1")
    key, cert = files.key, files.cert
    key.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        parse_config(with_(etcd={"cert": str(cert), "key": str(key)}))
    assert f"etcd.key: {key} is readable by group or others (mode 0644); run: chmod 600 {key}" \
        in err.value.problems
    key.chmod(0o600)
    assert parse_config(with_(etcd={"cert": str(cert), "key": str(key)})).etcd.key == str(key)


def test_a_watchdog_at_the_lease_ttl_is_fine():
    cfg = parse_config(with_(timing={"lease_ttl": 5}, agent={"watchdog": True, "watchdog_device": "/dev/watchdog",
                                                             "self_fence_timeout": 5}))
    assert cfg.agent.self_fence_timeout == 5 and cfg.agent.metadata_namespaces  # libosinfo by default


def test_host_tags_sit_beside_the_host_name():
    from haagent.config import parse_config

    cfg = parse_config({"cluster": "c", "host": "h1", "tags": ["ssd", "rack-a", "ssd"],
                        "etcd": {"endpoints": ["http://127.0.0.1:2379"]}})
    assert cfg.tags == ("rack-a", "ssd")
    with pytest.raises(Exception) as err:
        parse_config({"cluster": "c", "host": "h1", "tags": ["SSD"], "etcd": {"endpoints": ["http://127.0.0.1:2379"]}})
    assert "tags[0]: must be lowercase" in str(err.value)


def test_migration_tuning_is_the_section_overridden_per_vm():
    from haagent.config import MigrationSection, check_tuning

    cfg = parse_config(with_(migration={"bandwidth_cap": 80, "max_downtime_ms": 250, "postcopy": True,
                                        "postcopy_after_precopy": True})).migration
    assert dict(cfg.tuning()) == {"bandwidth_cap": 80, "max_downtime_ms": 250, "auto_converge": False,
                                  "postcopy": True, "postcopy_after_precopy": True}
    # a VM's mark wins key by key; turning post-copy off turns the switch after pre-copy off too
    assert dict(cfg.tuning({"bandwidth_cap": 20, "postcopy": False})) == {
        "bandwidth_cap": 20, "max_downtime_ms": 250, "auto_converge": False, "postcopy": False,
        "postcopy_after_precopy": False}
    # the deadline is measured at the cap when the cap is below the expected bandwidth
    assert MigrationSection().deadline(4096) == 122.9 and MigrationSection().deadline(4096, 20) == 614.4
    assert check_tuning({"bandwidth_cap": "50", "speed": 1, "postcopy": 1}) == [
        ("bandwidth_cap", "must be a whole number (got '50')"),
        ("postcopy", "must be true or false (got 1)"),
        ("speed", "unknown migration option (known: bandwidth_cap, max_downtime_ms, auto_converge, postcopy, "
                  "postcopy_after_precopy)")]


@pytest.mark.parametrize("preset", sorted(TIMING_PRESETS))
def test_a_timing_preset_sets_every_timing_and_a_key_beside_it_wins(preset):
    cfg = parse_config(with_(timing={"preset": preset}))
    want = TIMING_PRESETS[preset]
    got = {k: getattr(cfg.timing, k) for k in want}
    assert got == want and cfg.timing.preset == preset
    assert cfg.etcd.timeout <= cfg.timing.lease_ttl / 3
    assert parse_config(with_(timing={"preset": preset, "fence_delay": 7})).timing.fence_delay == 7


def test_presets_order_from_fast_to_conservative():
    fast, default, slow = (TIMING_PRESETS[p] for p in ("fast", "default", "conservative"))
    for key in ("lease_ttl", "fence_delay", "new_leader_grace", "heartbeat_interval"):
        assert fast[key] <= default[key] <= slow[key], key
    assert fast["lease_ttl"] < default["lease_ttl"] < slow["lease_ttl"]
