"""[notify]: bad input is one field-named line from check-config; good input fills NotifyConfig."""

from __future__ import annotations

import subprocess
import sys

import pytest

from haagent.config import parse_config
from haagent.errors import ConfigError

BASE = {"cluster": "prod-a", "host": "kvm01", "etcd": {"endpoints": ["http://10.0.0.1:2379"]}}


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "webhook.secret"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def problems(notify):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "notify": notify})
    return err.value.problems


def test_a_good_section(secret, tmp_path):
    cfg = parse_config({**BASE, "notify": {"url": "https://n8n.example.com/webhook/ha", "secret_file": str(secret),
                                           "events": ["failover.*", "alert.*"], "queue_dir": str(tmp_path / "q"),
                                           "max_backoff": 5}})
    n = cfg.notify
    assert (n.url, n.secret_file, n.events, n.max_backoff) == (
        "https://n8n.example.com/webhook/ha", str(secret), ("failover.*", "alert.*"), 5)
    assert (n.max_queued, n.timeout, n.min_backoff) == (10000, 5.0, 1.0)  # the defaults
    assert parse_config(BASE).notify is None  # no section: no webhook


@pytest.mark.parametrize("url, line", [
    ("ftp://n8n.example.com/x", "notify.url: must start with http:// or https:// (got 'ftp://n8n.example.com/x')"),
    ("n8n.example.com/webhook", "notify.url: must start with http:// or https:// (got 'n8n.example.com/webhook')"),
    ("http:///webhook", "notify.url: must name a host, like https://n8n.example.com/webhook/haagent (got 'http:///webhook')"),
    ("https://u:pw@n8n.example.com/x",
     "notify.url: must not carry a user or password; the receiver checks the signature header instead"),
])
def test_a_url_that_is_not_http_is_one_line(secret, url, line):
    assert problems({"url": url, "secret_file": str(secret)}) == [line]


def test_a_missing_secret_file_is_one_line(tmp_path):
    path = tmp_path / "nope"
    assert problems({"url": "http://127.0.0.1:1/x", "secret_file": str(path)}) == [
        f"notify.secret_file: {path} does not exist (create it with the secret and run: chmod 600 {path})"]
    assert problems({"url": "http://127.0.0.1:1/x"}) == [
        "notify.secret_file: is required: every event is signed (HMAC-SHA256) so the receiver can tell it came "
        "from this cluster"]


def test_a_secret_file_others_can_read_is_one_line(secret):
    secret.chmod(0o644)
    assert problems({"url": "http://127.0.0.1:1/x", "secret_file": str(secret)}) == [
        f"notify.secret_file: {secret} is readable by group or others (mode 0644); run: chmod 600 {secret}"]


def test_other_fields(secret):
    good = {"url": "http://127.0.0.1:1/x", "secret_file": str(secret)}
    assert problems({**good, "events": []}) == ['notify.events: must list at least one glob (all events: ["*"])']
    assert problems({**good, "min_backoff": 10, "max_backoff": 2}) == [
        "notify.max_backoff: must be at least min_backoff (10) (got 2)"]
    assert problems({**good, "queue_dir": "var/q"}) == ["notify.queue_dir: must be an absolute path (got 'var/q')"]
    assert problems({**good, "secret": "inline"}) == ["notify.secret: unknown key"]


def test_check_config_prints_the_line_and_exits_2(tmp_path, secret):
    cfg = tmp_path / "c.toml"
    cfg.write_text('cluster = "c"\nhost = "h"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
                   f'[notify]\nurl = "ftp://x/y"\nsecret_file = "{secret}"\n')
    r = subprocess.run([sys.executable, "-m", "haagent.cli", "check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "notify.url: must start with http:// or https:// (got 'ftp://x/y')" in r.stderr
    assert "Traceback" not in r.stderr
