"""A real multi-host KVM cluster in namespaces on one machine (``haagent lab``); see docs/lab.md."""

from __future__ import annotations

from typing import Any

__all__ = ["Lab"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import haagent.lab.layout` stays free of the lab's heavier imports.
    if name == "Lab":
        from haagent.lab.lab import Lab
        return Lab
    raise AttributeError(name)
