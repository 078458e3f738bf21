"""A real multi-host KVM cluster in namespaces on one machine (``haagent lab``); see docs/lab.md."""

from __future__ import annotations

from typing import Any

__all__ = ["Guest", "Lab"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import haagent.lab.layout` stays free of the lab's heavier imports.
    if name == "Lab":
        from haagent.lab.lab import Lab
        return Lab
    if name == "Guest":
        from haagent.lab.guest import Guest
        return Guest
    raise AttributeError(name)
