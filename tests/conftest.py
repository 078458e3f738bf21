"""Shared pytest setup. Area fixtures live in each directory's own conftest.py."""
