"""haagent: HA orchestration and failover agent for KVM clusters."""

__version__ = "0.1.0"
