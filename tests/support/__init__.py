"""Shared test helpers: conformance suites and writers of small real media files."""
