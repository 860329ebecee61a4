"""Root conftest: fixture modules live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.softhsm",
    "tests.fixtures.swtpm",
    "tests.fixtures.postgres",
]
