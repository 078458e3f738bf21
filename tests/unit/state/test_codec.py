"""The codec's view decoding: a memo across views decodes only what changed, and changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

from haagent.state import codec
from haagent.state.codec import DecodeMemo, build_view
from haagent.store.keys import Keys
from haagent.store.port import KV

K = Keys("c")


def _kvs(raw: dict[str, bytes], rev: int = 1) -> dict[str, KV]:
    return {key: KV(key, value, rev, rev, 1, 0) for key, value in raw.items()}


def _cluster() -> dict[str, bytes]:
    raw = {K.host_alive("a"): b"{}", K.host_state("a"): b'{"state": "active"}',
           K.host_report("a"): json.dumps({"cpus": 8, "memory_mib": 4096, "running_vms": ["u1"]}).encode(),
           K.host_report("b"): b'{"cpus": 8, "running_vms": ["u2"], "cpu": "zen"}',  # bad inventory
           K.vm_spec("u2"): b"[1]", K.vm_placement("u1"): b'{"host": "a"}'}
    raw[K.vm_spec("u1")] = json.dumps({"name": "web-1", "vcpus": 2}).encode()
    return raw


def test_a_memo_gives_the_same_view_and_decodes_each_version_once(monkeypatch):
    calls: list[str] = []
    real = codec._obj
    monkeypatch.setattr(codec, "_obj", lambda kv: calls.append(kv.value) or real(kv))
    kvs = _kvs(_cluster())
    plain = build_view(kvs, K, 3)
    decoded_plain = len(calls)
    memo = DecodeMemo()
    calls.clear()
    assert build_view(kvs, K, 3, memo) == plain
    assert len(calls) == decoded_plain
    calls.clear()
    # Again: bad records are still reported (and still leave the host's inventory marked bad),
    # though nothing is decoded a second time.
    again = build_view(kvs, K, 3, memo)
    assert again == plain and sorted(k for k, _ in again.bad_records) == [K.host_report("b"), K.vm_spec("u2")]
    assert again.hosts["b"].inventory_error and again.hosts["b"].running == frozenset({"u2"})
    # Only records at a new mod_revision are decoded again; a deleted key leaves the view.
    assert calls == []
    kvs[K.vm_placement("u1")] = KV(K.vm_placement("u1"), b'{"host": "b"}', 1, 9, 2, 0)
    del kvs[K.vm_spec("u2")]
    changed = build_view(kvs, K, 3, memo)
    assert calls == [b'{"host": "b"}']
    assert changed == replace(build_view(kvs, K, 3))
    assert changed.placements == {"u1": "b"} and K.vm_spec("u2") not in dict(changed.bad_records)
