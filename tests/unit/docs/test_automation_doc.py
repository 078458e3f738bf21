"""docs/automation.md matches the code: its n8n workflow is valid JSON wired node to node that
checks the header haagent signs with, its sample body has the fields an event has, and its
table names every event type. Where Node.js is installed, the workflow's Code node is run on a
body signed by haagent (and on a tampered one)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from haagent.notify.config import NotifyConfig
from haagent.notify.webhook import SIGNATURE_HEADER, Notifier, sign

DOC = (Path(__file__).resolve().parents[3] / "docs" / "automation.md").read_text()


def _blocks(lang: str) -> list[str]:
    found, current, fence = [], None, ""
    for line in DOC.splitlines():
        if line.startswith("```"):
            if current is None:
                current, fence = [], line[3:].strip()
            else:
                if fence == lang:
                    found.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def workflow() -> dict:
    [flow] = [json.loads(b) for b in _blocks("json") if '"nodes"' in b]
    return flow


def code_node() -> str:
    [code] = [n["parameters"]["jsCode"] for n in workflow()["nodes"] if n["type"] == "n8n-nodes-base.code"]
    return code


def test_the_n8n_workflow_parses_and_is_wired():
    flow = workflow()
    names = [n["name"] for n in flow["nodes"]]
    assert len(names) == len(set(names))
    for source, outputs in flow["connections"].items():
        assert source in names
        for branch in outputs["main"]:
            assert all(link["node"] in names for link in branch)
    [hook] = [n for n in flow["nodes"] if n["type"] == "n8n-nodes-base.webhook"]
    assert hook["parameters"]["httpMethod"] == "POST" and hook["parameters"]["options"]["rawBody"] is True
    assert hook["name"] in flow["connections"]


def test_it_checks_the_header_haagent_signs_with():
    assert f"headers['{SIGNATURE_HEADER.lower()}']" in code_node()  # n8n lowercases header names
    assert f"{SIGNATURE_HEADER}: sha256=" in DOC


def test_the_sample_body_has_an_events_fields(tmp_path):
    [sample] = [json.loads(b) for b in _blocks("json") if '"schema"' in b and '"nodes"' not in b]
    secret = tmp_path / "s"
    secret.write_text("x")
    n = Notifier(NotifyConfig("http://127.0.0.1:1/", str(secret), queue_dir=str(tmp_path / "q")), "c", "h1")
    n.publish("failover.finished", {})
    _, body = n.queue.head()
    assert set(sample) == set(json.loads(body))


@pytest.mark.parametrize("event_type", ["leader.started", "host.state_changed", "failover.started", "fence.result",
                                        "failover.finished", "alert.raised", "alert.cleared", "cluster.<kind>"])
def test_the_table_names_every_event_type(event_type):
    assert f"`{event_type}`" in DOC


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (the workflow's JS is not run)")
def test_the_code_node_accepts_haagents_signature_and_nothing_else():
    body = json.dumps({"id": "e1", "type": "alert.raised", "data": {}}).encode()
    secret = b"n8n-shared-secret"

    def run(signature: str, again: bool = False) -> dict:
        script = (
            "const $env = {HAAGENT_WEBHOOK_SECRET: 'n8n-shared-secret\\n'};\n"
            f"const raw0 = Buffer.from({json.dumps(body.decode())});\n"
            f"const $input = {{item: {{json: {{headers: {{'{SIGNATURE_HEADER.lower()}': {json.dumps(signature)}}}}}}}}};\n"
            "const $itemIndex = 0;\n"
            f"const store = {{ids: {json.dumps(['e1'] if again else [])}}};\n"
            "const $getWorkflowStaticData = () => store;\n"
            "const ctx = {helpers: {getBinaryDataBuffer: async (i, name) => raw0}};\n"
            f"(async function () {{ {code_node()} }}).call(ctx).then(r => console.log(JSON.stringify(r)));\n")
        r = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["json"]

    good = sign(secret, body)
    assert run(good) == {"valid": True, "repeat": False, "event": json.loads(body)}
    assert run(good, again=True)["repeat"] is True
    assert run(sign(b"another", body)) == {"valid": False}
    assert run(good[:-1] + ("0" if good[-1] != "0" else "1")) == {"valid": False}
    assert run("") == {"valid": False}
