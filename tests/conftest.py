"""Shared test configuration: pytester runs the plugin in a scratch folder."""
pytest_plugins = ["pytester"]
