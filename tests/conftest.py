"""The suite's shared fixtures and numerics switches live in common/fixtures.py (a pytest plugin)."""

pytest_plugins = ["common.fixtures"]
