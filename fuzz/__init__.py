"""Fuzzers that live in the repository (issue 13 item 8). ``python -m fuzz.parsers --help``."""
