"""The hypervisor port (``port.Hypervisor``) and its implementations.

``libvirt_impl.LibvirtHypervisor`` for the agent, ``fake.FakeHypervisor`` for the simulator;
``options.MigrationOptions`` mirrors ``virsh migrate``; ``stats`` turns counters into usage.
Import the libvirt implementation from its module: the rest works without libvirt-python.
"""

from haagent.hypervisor.options import MigrationOptions
from haagent.hypervisor.port import (EventKind, HostInfo, Hypervisor, Location, MigrationControl,
                                     MigrationOutcome, MigrationProgress, MigrationResult,
                                     MigrationTarget, ShutdownOutcome, StatsSample, VmEvent, VmInfo)

__all__ = ["EventKind", "HostInfo", "Hypervisor", "Location", "MigrationControl", "MigrationOptions",
           "MigrationOutcome", "MigrationProgress", "MigrationResult", "MigrationTarget",
           "ShutdownOutcome", "StatsSample", "VmEvent", "VmInfo"]
