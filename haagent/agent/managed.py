"""The HA mark on a VM: a libvirt ``<metadata>`` element, where operators already look.

    <metadata>
      <ha:vm xmlns:ha="https://haagent.dev/xmlns/ha/1" priority="10" policy="restart"/>

``priority`` is optional: without it the naming convention decides (``acme-prod-api-1`` is
restarted before ``acme-dev-api-1``), and a name outside the convention gets 0.
    </metadata>

It travels with the domain XML (``virsh dumpxml``, ``virsh edit``, live migration), needs no
side database, and ``virsh metadata DOM https://haagent.dev/xmlns/ha/1`` shows it. A VM without
it is not managed. ``policy`` is restart (restart elsewhere after its host is fenced), migrate
(the same, and drain live-migrates it) or none (tracked, never restarted).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from haagent.errors import InvalidDomain

NS = "https://haagent.dev/xmlns/ha/1"
PREFIX = "ha"
KEY = "vm"
POLICIES = ("restart", "migrate", "none")


@dataclass(frozen=True)
class HaMark:
    priority: int | None = None
    policy: str = "restart"

    def element(self) -> str:
        """The element as libvirt's setMetadata wants it (namespace given separately)."""
        prio = f' priority="{self.priority}"' if self.priority is not None else ""
        return f'<{KEY}{prio} policy="{self.policy}"/>'


def validate(priority: int | None, policy: str) -> HaMark:
    if policy not in POLICIES:
        raise InvalidDomain(f"policy must be one of {', '.join(POLICIES)} (got {policy!r})")
    if priority is not None and not -1000 <= priority <= 1000:
        raise InvalidDomain(f"priority must be between -1000 and 1000 (got {priority})")
    return HaMark(priority, policy)


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
        return validate(None if prio is None else int(prio), el.get("policy", "restart"))
    except (ValueError, InvalidDomain):
        return HaMark()  # a damaged mark still means "managed": safer than dropping HA silently


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
        attrs = {"policy": mark.policy} if mark.priority is None else {"priority": str(mark.priority), "policy": mark.policy}
        ET.SubElement(meta, f"{{{NS}}}{KEY}", attrs)
    return ET.tostring(root, encoding="unicode")
