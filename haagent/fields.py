"""The one field validator: read typed fields out of a decoded table, one problem line per bad field.

TOML config (``haagent.config.Reader``), cluster JSON (``policies.io``) and fence device options
(``fencing.config``) all read through ``Fields``, so every bad value is reported the same way,
``path.key: what is wrong (got value)``, and nothing stops at the first problem.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

MISSING: Any = object()


class Fields:
    """Typed reads of one table (a TOML table or a JSON object), recording problems.

    ``kind`` names the container in "must be a table" messages; ``unknown`` is what ``finish``
    says of a key nobody read; ``show`` renders a bad value in messages; with ``null_is_missing``
    a JSON ``null`` counts as absent.
    """

    def __init__(self, table: Any, path: str, problems: list[str], *, kind: str = "table",
                 unknown: str = "unknown key", show: Callable[[Any], str] = repr, null_is_missing: bool = False):
        self.path, self.problems = path, problems
        self.kind, self.unknown, self.show, self.null_is_missing = kind, unknown, show, null_is_missing
        self.seen: set[str] = set()
        if table is MISSING or table is None:
            table = {}
        if not isinstance(table, dict):
            self.problems.append(f"{path}: must be {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                                 f"(got {show(table) if kind == 'object' else type(table).__name__})")
            table = {}
        self.table: dict[str, Any] = table

    # -- plumbing --------------------------------------------------------------------------------

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else (self.path or key)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.name(key)}: {message}")

    def raw(self, key: str) -> Any:
        """The value as given (MISSING when absent); marks the key as read."""
        self.seen.add(key)
        value = self.table.get(key, MISSING)
        return MISSING if value is None and self.null_is_missing else value

    def present(self, key: str) -> bool:
        return self.raw(key) is not MISSING

    def get(self, key: str, default: Any = MISSING) -> Any:
        """The raw value; ``default`` when absent, and a problem if there is no default."""
        value = self.raw(key)
        if value is MISSING:
            if default is MISSING:
                self.problem(key, "is required")
                return None
            return default
        return value

    def sub(self, key: str) -> "Fields":
        return type(self)(self.raw(key), self.name(key), self.problems)

    def finish(self) -> None:
        """Report keys nobody read: usually a typo an operator wants to hear about."""
        for key in sorted(set(self.table) - self.seen):
            self.problem(key, self.unknown)

    def _bad(self, key: str, message: str, default: Any) -> Any:
        self.problem(key, message)
        return None if default is MISSING else default

    # -- typed reads -----------------------------------------------------------------------------

    def string(self, key: str, default: Any = MISSING, *, choices: tuple[Any, ...] | None = None,
               pattern: re.Pattern[str] | None = None, pattern_hint: str = "", non_empty: bool = False,
               fallback: bool = True) -> Any:
        """A string. On a bad value the default is returned (``fallback``) or None."""
        value = self.raw(key)
        if value is MISSING:
            return self.get(key, default)
        bad_default = default if fallback else MISSING
        if not isinstance(value, str) or (non_empty and not value):
            kind = "a non-empty string" if non_empty else "a string"
            return self._bad(key, f"must be {kind} (got {self.show(value)})", bad_default)
        if choices is not None and value not in choices:
            return self._bad(key, f"must be one of {', '.join(map(str, choices))} (got {value!r})", bad_default)
        if pattern is not None and not pattern.match(value):
            return self._bad(key, f"{pattern_hint} (got {value!r})", bad_default)
        return value

    def number(self, key: str, default: Any = MISSING, *, minimum: float | None = None,
               maximum: float | None = None, positive: bool = False, integer: bool = False,
               choices: tuple[Any, ...] | None = None, non_negative: bool = False, fallback: bool = True) -> Any:
        """A finite number (a whole one with ``integer``), within the given bounds."""
        value = self.raw(key)
        if value is MISSING:
            return self.get(key, default)
        bad_default = default if fallback else MISSING
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return self._bad(key, f"must be a number (got {self.show(value)})", bad_default)
        if integer and value != int(value):
            return self._bad(key, f"must be a whole number (got {value!r})", bad_default)
        if positive and value <= 0:
            return self._bad(key, f"must be greater than 0 (got {value!r})", bad_default)
        if non_negative and value < 0:
            return self._bad(key, f"must not be negative (got {value!r})", bad_default)
        if minimum is not None and value < minimum:
            return self._bad(key, f"must be at least {minimum:g} (got {value!r})", bad_default)
        if maximum is not None and value > maximum:
            return self._bad(key, f"must be at most {maximum:g} (got {value!r})", bad_default)
        if choices and value not in choices:
            return self._bad(key, f"must be one of {', '.join(map(str, choices))} (got {value!r})", bad_default)
        return int(value) if integer else float(value)

    def integer(self, key: str, default: Any = MISSING, minimum: int = 0) -> Any:
        """A whole number of at least ``minimum`` (anything else is "not a whole number")."""
        value = self.raw(key)
        if value is MISSING:
            return self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value):
            return self._bad(key, f"must be a whole number (got {self.show(value)})", MISSING)
        if value < minimum:
            return self._bad(key, f"must be at least {minimum} (got {value!r})", MISSING)
        return int(value)

    def boolean(self, key: str, default: Any) -> Any:
        value = self.raw(key)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false (got {self.show(value)})")
            return default
        return value

    def string_list(self, key: str, default: Any = MISSING, *, names: bool = False) -> Any:
        """A list of strings (of non-empty ones, "names", with ``names``)."""
        value = self.raw(key)
        if value is MISSING:
            if default is MISSING:
                self.problem(key, "is required")
                return ()
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and (v or not names) for v in value):
            what = "a list of names" if names else "a list of strings"
            self.problem(key, f"must be {what} (got {self.show(value)})")
            return ()
        return tuple(value)
