"""The [fencing] config section. Placeholder parser until the fencing package fills it in."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any


def parse_fencing_section(raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None or not isinstance(raw, dict):
        return MappingProxyType({})
    return MappingProxyType(dict(raw))
