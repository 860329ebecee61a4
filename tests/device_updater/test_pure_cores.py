"""Pure cores import no I/O library (DESIGN §7): each is imported in a fresh interpreter and
``sys.modules`` is inspected, so a stray import anywhere in its import graph is caught.

Pure here means: the standard library and edgepkg/device_updater modules only. The state machine
decides on plain values; the slot store, the sealer, the TUF client and the HTTP client are
passed in by the daemon, never imported by the core.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PURE_CORES = [
    "edgepkg.protocol",
    "device_updater.state",
    "device_updater.recovery",
    "device_updater.outcomes",
    "device_updater.slot_values",
    "device_updater.trial",
]

# Named so a failure says what went wrong in words; the check itself refuses any third-party
# module (anything outside the standard library and our own packages).
IO_LIBRARIES = {"cryptography", "pkcs11", "zstandard", "requests", "tuf", "numpy", "urllib3"}
OWN_PACKAGES = {"edgepkg", "device_updater", "update_server"}

_PROBE = """
import importlib, json, sys
before = set(sys.modules)
importlib.import_module(sys.argv[1])
loaded = {m.split(".")[0] for m in set(sys.modules) - before}
print(json.dumps(sorted(loaded)))
"""


def _loaded_top_level(module: str, repo_root: Path) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=repo_root,
                          capture_output=True, text=True, check=False, timeout=120,
                          env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}"
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _third_party(loaded: set[str]) -> set[str]:
    # _sysconfigdata_* is the standard library's generated build-config module (zoneinfo loads
    # it through sysconfig to find the tz database); it is missing from stdlib_module_names.
    return {m for m in loaded
            if m not in sys.stdlib_module_names and m not in OWN_PACKAGES and m != "__main__"
            and not m.startswith("_sysconfigdata_")}


@pytest.mark.parametrize("module", PURE_CORES)
def test_pure_core_imports_no_io_library(module: str, repo_root: Path) -> None:
    extra = _third_party(_loaded_top_level(module, repo_root))
    io = extra & IO_LIBRARIES
    assert not io, f"{module} loads I/O libraries {sorted(io)}: import them in a thin wrapper"
    assert not extra, f"{module} loads third-party modules {sorted(extra)}"


def test_probe_sees_an_impure_import(repo_root: Path) -> None:
    # The slot store seals with cryptography: if the probe did not report it, the checks above
    # would pass vacuously.
    assert "cryptography" in _third_party(_loaded_top_level("device_updater.slots", repo_root))
