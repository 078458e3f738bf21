"""haagent's etcd roles: the names check-config knows, nothing outside the cluster's keys, and the
etcdctl commands `setup-rbac --print-commands` shows for an admin config."""

from __future__ import annotations

from click.testing import CliRunner

from haagent.cli import main


def test_the_roles_are_the_ones_check_config_knows():
    from haagent.config import ETCD_ROLES
    from haagent.store.rbac import role_permissions

    assert tuple(role_permissions("c")) == ETCD_ROLES
    perms = role_permissions("c")
    assert {p.prefix for ps in perms.values() for p in ps} <= {"/haagent/c/", "/haagent/c/requests/"}


def test_print_commands_shows_the_etcdctl_commands_for_the_config(tmp_path):
    cfg = tmp_path / "admin.toml"
    cfg.write_text('cluster = "prod"\nhost = "admin"\n[etcd]\nendpoints = ["http://127.0.0.1:1"]\n'
                   '[etcd.users]\nkvm1 = "haagent-agent"\ngrafana = "haagent-reader"\n')
    res = CliRunner().invoke(main, ["etcd", "setup-rbac", "--print-commands", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "etcdctl user add root --no-password" and lines[-1] == "etcdctl auth enable"
    assert "etcdctl role grant-permission haagent-operator --prefix=true readwrite /haagent/prod/requests/" in lines
    assert lines.index("etcdctl user add grafana --no-password") < lines.index("etcdctl user add kvm1 --no-password")
    assert "etcdctl user grant-role kvm1 haagent-agent" in lines
