"""Simulated fence devices (IPMI BMC, APC PDU) for tests, the lab and trying fence configs."""
