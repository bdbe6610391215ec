"""Helpers shared by the tests and the benchmark scripts (bench/ imports `tests.support.processes`)."""
