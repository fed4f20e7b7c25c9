"""Faithful local fakes of services that cannot run in tests (see docs/sinks.md)."""
