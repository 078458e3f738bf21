"""``haagent plan`` as an operator runs it: a real process, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLUSTER = {
    "hosts": [{"name": "h1", "cpus": 8, "memory_mib": 16384, "cpu_family": "zen3"},
              {"name": "h2", "cpus": 8, "memory_mib": 16384, "cpu_family": "zen3"},
              {"name": "h3", "cpus": 8, "memory_mib": 16384, "state": "fenced"}],
    "vms": [{"name": "a", "vcpus": 2, "memory_mib": 4096, "host": "h1"},
            {"name": "b", "vcpus": 2, "memory_mib": 4096, "host": "h1"},
            {"name": "c", "vcpus": 2, "memory_mib": 4096, "host": "h3"},
            {"name": "huge", "vcpus": 2, "memory_mib": 20000, "host": "h3"}],
}


def run(*args, cluster=CLUSTER, tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster) if not isinstance(cluster, str) else cluster)
    return subprocess.run([sys.executable, "-m", "haagent.cli", "plan", *args, "--cluster", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_rebalance_json_shape(tmp_path):
    p = run("rebalance", "--json", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"moves", "score_before", "score_after", "gib", "stopped"}
    assert [(m["vm"], m["from"], m["to"], m["gib"]) for m in out["moves"]] == [("a", "h1", "h2", 4.0)]
    assert out["score_after"] == pytest.approx(out["moves"][-1]["score_after"])
    assert out["score_after"] < out["score_before"]
    assert out["gib"] == 4.0 and out["stopped"] == "min_gain"


def test_rebalance_without_limits_plans_every_move_worth_min_gain(tmp_path):
    cluster = {"hosts": [{"name": f"h{i}", "cpus": 64, "memory_mib": 262144} for i in range(3)],
               "vms": [{"name": f"v{j:02d}", "vcpus": 1, "memory_mib": 2048, "host": "h0"}
                       for j in range(60)]}
    out = json.loads(run("rebalance", "--json", cluster=cluster, tmp_path=tmp_path).stdout)
    assert len(out["moves"]) == 40  # not cut at 20: 60 VMs end 20 per host
    capped = json.loads(run("rebalance", "--json", "--max-gib", "9", "--max-moves", "3",
                            cluster=cluster, tmp_path=tmp_path).stdout)
    assert len(capped["moves"]) == 3 and capped["stopped"] == "max_moves"
    capped = json.loads(run("rebalance", "--json", "--max-gib", "9", cluster=cluster,
                            tmp_path=tmp_path).stdout)
    assert len(capped["moves"]) == 4 and capped["stopped"] == "max_gib"


@pytest.mark.parametrize("args,needle", [
    (["--max-gib", "-1"], "max_gib: must not be negative (got -1.0)"),
    (["--max-moves", "-3"], "max_moves: must not be negative (got -3)"),
    (["--min-gain", "-0.5"], "min_gain: must not be negative (got -0.5)"),
    (["--min-gain", "nan"], "min_gain: must be a finite number (got nan)"),
    (["--policy", "negative-weight.toml"],
     "policy.rebalance.memory_weight: must be at least 0 (got -1)"),
])
def test_rebalance_bad_limit_or_weight_is_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "negative-weight.toml").write_text("[policy.rebalance]\nmemory_weight = -1\n")
    args = [str(tmp_path / a) if a.endswith(".toml") else a for a in args]
    p = run("rebalance", *args, tmp_path=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_place_reports_unplaceable_and_exits_1(tmp_path):
    p = run("place", "--json", tmp_path=tmp_path)
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert [x["vm"] for x in out["placements"]] == ["c"]
    assert out["unplaceable"][0]["vm"] == "huge" and out["unplaceable"][0]["reasons"]


@pytest.mark.parametrize("command", [["evacuate", "h1"], ["capacity"], ["explain", "a"],
                                     ["place"], ["rebalance"]])
def test_every_command_renders_tables(tmp_path, command):
    p = run(*command, tmp_path=tmp_path)
    assert p.returncode in (0, 1), p.stderr
    assert p.stdout.strip() and "Traceback" not in p.stderr


@pytest.mark.parametrize("cluster,needle", [
    ({"hosts": [{"name": "h1", "cpus": 8}]}, "memory_mib: is required"),
    ({"hosts": [{"name": "h1", "cpus": -8, "memory_mib": 1}]}, "cpus: must be at least 1"),
    ({**CLUSTER, "vms": [{"name": "x", "vcpus": 1, "memory_mib": 1,
                          "host_affinity": {"hosts": ["h9"]}}]}, "unknown host 'h9'"),
    ({**CLUSTER, "vms": CLUSTER["vms"] + [CLUSTER["vms"][0]]}, "duplicate VM name: a"),
    ("{oops", "not valid JSON"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, cluster, needle):
    p = run("place", cluster=cluster, tmp_path=tmp_path)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("number,shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e400", "inf")])
def test_non_finite_numbers_are_one_line_errors_not_tracebacks(tmp_path, number, shown):
    text = ('{"hosts": [{"name": "h1", "cpus": 8, "memory_mib": 4096}], '
            f'"vms": [{{"name": "v", "vcpus": 1, "memory_mib": {number}}}]}}')
    p = run("place", cluster=text, tmp_path=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"vms[0].memory_mib: must be a finite number (got {shown})" in p.stderr
