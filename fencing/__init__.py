"""Fence plugins and the runner that gives them their semantics."""
