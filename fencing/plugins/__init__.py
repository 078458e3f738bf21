"""Built-in fence plugins, registered as ``haagent.fencing`` entry points in pyproject.toml."""
