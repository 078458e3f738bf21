"""The HA mark on a VM: a libvirt ``<metadata>`` element, where operators already look.

    <metadata>
      <ha:vm xmlns:ha="https://haagent.dev/xmlns/ha/1" priority="10" policy="restart" groups="db"/>

``priority`` is optional: without it the naming convention decides (``acme-prod-api-1`` is
restarted before ``acme-dev-api-1``), and a name outside the convention gets 0.
    </metadata>

It travels with the domain XML (``virsh dumpxml``, ``virsh edit``, live migration), needs no
side database, and ``virsh metadata DOM https://haagent.dev/xmlns/ha/1`` shows it. A VM without
it is not managed. ``policy`` is restart (restart elsewhere after its host is fenced), migrate
(the same, and drain live-migrates it) or none (tracked, never restarted). ``groups`` is an
optional comma-separated list of placement groups (``[policy.groups]`` in the leader's config
says whether each is affinity or anti-affinity, hard or soft; an undeclared group is a soft
anti-affinity: its members are spread when possible). ``migration`` optionally overrides the
leader's ``[migration]`` tuning for this VM, as comma-separated ``key=value`` pairs
(``migration="bandwidth_cap=50,max_downtime_ms=200,postcopy=true"``; keys: bandwidth_cap,
max_downtime_ms, auto_converge, postcopy, postcopy_after_precopy).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from haagent.config import MIGRATION_TUNING, check_tuning
from haagent.errors import InvalidDomain

NS = "https://haagent.dev/xmlns/ha/1"
PREFIX = "ha"
KEY = "vm"
POLICIES = ("restart", "migrate", "none")
GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class HaMark:
    priority: int | None = None
    policy: str = "restart"
    groups: tuple[str, ...] = ()
    migration: tuple[tuple[str, bool | int], ...] = ()  # per-VM [migration] tuning, sorted by key

    def attrs(self) -> dict[str, str]:
        out = {} if self.priority is None else {"priority": str(self.priority)}
        out["policy"] = self.policy
        if self.groups:
            out["groups"] = ",".join(self.groups)
        if self.migration:
            out["migration"] = format_tuning(self.migration)
        return out

    def element(self) -> str:
        """The element as libvirt's setMetadata wants it (namespace given separately)."""
        return f"<{KEY}" + "".join(f' {k}="{v}"' for k, v in self.attrs().items()) + "/>"


def validate(priority: int | None, policy: str, groups: tuple[str, ...] = (),
             migration: dict[str, bool | int] | None = None) -> HaMark:
    if policy not in POLICIES:
        raise InvalidDomain(f"policy must be one of {', '.join(POLICIES)} (got {policy!r})")
    if priority is not None and not -1000 <= priority <= 1000:
        raise InvalidDomain(f"priority must be between -1000 and 1000 (got {priority})")
    for g in groups:
        if not GROUP_RE.match(g):
            raise InvalidDomain(f"group names are lowercase letters, digits, '.', '_' or '-' (got {g!r})")
    problems = check_tuning(migration or {})
    if problems:
        raise InvalidDomain("; ".join(f"migration {k}: {why}" for k, why in problems))
    return HaMark(priority, policy, tuple(sorted(set(groups))), tuple(sorted((migration or {}).items())))


def format_tuning(tuning: tuple[tuple[str, bool | int], ...]) -> str:
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in tuning)


def parse_tuning(text: str | None) -> dict[str, bool | int]:
    """``key=value,...`` -> the values by their kind; raises InvalidDomain naming the bad pair."""
    out: dict[str, bool | int] = {}
    for pair in (p.strip() for p in (text or "").split(",")):
        if not pair:
            continue
        key, sep, raw = (x.strip() for x in pair.partition("="))
        kind = MIGRATION_TUNING.get(key)
        if not sep or kind is None:
            raise InvalidDomain(f"migration: expected key=value with a key among {', '.join(MIGRATION_TUNING)} "
                                f"(got {pair!r})")
        if kind is bool:
            if raw.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise InvalidDomain(f"migration {key}: must be true or false (got {raw!r})")
            out[key] = raw.lower() in ("true", "yes", "1")
        else:
            try:
                out[key] = int(raw)
            except ValueError:
                raise InvalidDomain(f"migration {key}: must be a whole number (got {raw!r})") from None
    problems = check_tuning(out)
    if problems:
        raise InvalidDomain("; ".join(f"migration {k}: {why}" for k, why in problems))
    return out


def parse_groups(text: str | None) -> tuple[str, ...]:
    return tuple(g.strip() for g in (text or "").split(",") if g.strip())


def parse_mark(domain_xml: str) -> HaMark | None:
    """The HA mark in a domain's XML, or None if it is not managed."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise InvalidDomain(f"malformed domain XML: {exc}") from exc
    el = root.find(f"metadata/{{{NS}}}{KEY}")
    if el is None:
        return None
    try:
        prio = el.get("priority")
        mark = validate(None if prio is None else int(prio), el.get("policy", "restart"),
                        parse_groups(el.get("groups")))
    except (ValueError, InvalidDomain):
        return HaMark()  # a damaged mark still means "managed": safer than dropping HA silently
    try:
        tuning = parse_tuning(el.get("migration"))
    except InvalidDomain:
        return mark  # damaged tuning: the cluster's [migration] values apply, the rest of the mark holds
    return HaMark(mark.priority, mark.policy, mark.groups, tuple(sorted(tuning.items())))


def with_mark(domain_xml: str, mark: HaMark | None) -> str:
    """Domain XML with the HA mark set (or removed when ``mark`` is None)."""
    ET.register_namespace(PREFIX, NS)
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise InvalidDomain(f"malformed domain XML: {exc}") from exc
    meta = root.find("metadata")
    if meta is None:
        if mark is None:
            return domain_xml
        meta = ET.SubElement(root, "metadata")
    for el in meta.findall(f"{{{NS}}}{KEY}"):
        meta.remove(el)
    if mark is not None:
        ET.SubElement(meta, f"{{{NS}}}{KEY}", mark.attrs())
    return ET.tostring(root, encoding="unicode")
