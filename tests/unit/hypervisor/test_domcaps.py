"""Usable CPU models from libvirt domain capabilities (a real sample from a lab host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haagent.errors import InvalidDomain
from haagent.hypervisor.domcaps import usable_cpu_models

DATA = Path(__file__).parent / "data"


def test_usable_models_of_a_real_kvm_host() -> None:
    # This paravirtual machine's KVM can give a guest only the oldest models in full.
    xml = (DATA / "domcaps-kvm-libvirt9.xml").read_text()
    assert usable_cpu_models(xml) == ("486", "pentium", "pentium2", "pentium3")


def test_no_custom_mode_means_no_models_and_bad_xml_is_one_clear_error() -> None:
    assert usable_cpu_models("<domainCapabilities><cpu><mode name='custom' supported='no'>"
                             "<model usable='yes'>qemu64</model></mode></cpu></domainCapabilities>") == ()
    assert usable_cpu_models("<domainCapabilities/>") == ()
    with pytest.raises(InvalidDomain, match="malformed domain capabilities"):
        usable_cpu_models("<domainCapabilities>")
    with pytest.raises(InvalidDomain, match="root <capabilities>"):
        usable_cpu_models("<capabilities/>")
