"""Helpers shared by the tests: real node processes, raw clients, fixture folders, streams."""
