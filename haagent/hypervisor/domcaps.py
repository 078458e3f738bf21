"""Pure parser for libvirt domain capabilities (no libvirt import, no I/O)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from haagent.errors import InvalidDomain


def usable_cpu_models(xml: str) -> tuple[str, ...]:
    """The CPU models a custom ``<cpu>`` may name on this host: ``usable='yes'``, sorted.

    libvirt marks a model usable when QEMU can give the guest all of its features here, for the
    domain type the capabilities were asked for (under KVM that follows the host CPU; under TCG,
    what QEMU emulates).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise InvalidDomain(f"malformed domain capabilities XML: {e}") from e
    if root.tag != "domainCapabilities":
        raise InvalidDomain(f"domain capabilities XML has root <{root.tag}>")
    custom = [m for m in root.findall("cpu/mode") if m.get("name") == "custom"]
    if not custom or custom[0].get("supported") != "yes":
        return ()
    return tuple(sorted({(m.text or "").strip() for m in custom[0].findall("model")
                         if m.get("usable") == "yes" and (m.text or "").strip()}))
