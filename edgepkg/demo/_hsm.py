"""Key custody for the demo: SoftHSM2 tokens in the workspace when available, files otherwise.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when the library is first loaded, so
:func:`setup_softhsm` must run before anything in this process touches PKCS#11. Child processes
(the update server, the device updaters) inherit the variable and see the same token directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgepkg.errors import Error

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "EDGEPKG_PKCS11_MODULE"


class DemoHSMError(Error):
    """A SoftHSM2 token could not be initialised."""


def softhsm_module() -> str | None:
    """The SoftHSM2 PKCS#11 module when both it and ``softhsm2-util`` are installed."""
    module = os.environ.get("EDGEPKG_DEMO_SOFTHSM_MODULE", SOFTHSM_MODULE)
    if shutil.which("softhsm2-util") and os.path.exists(module):
        return module
    return None


@dataclass(frozen=True)
class Token:
    """One initialised SoftHSM2 token; the user PIN sits in a 0600 file in the workspace."""

    label: str
    module: str
    pin_file: Path

    def uri(self, obj: str | None = None, *, type_: str | None = None) -> str:
        """A ``pkcs11:`` URI naming the token (and an object) with ``pin-source`` = the PIN file."""
        path = [f"token={self.label}"]
        if obj is not None:
            path.append(f"object={obj}")
        if type_ is not None:
            path.append(f"type={type_}")
        return f"pkcs11:{';'.join(path)}?module-path={self.module}&pin-source={self.pin_file}"


def write_softhsm_conf(hsm_dir: Path) -> Path:
    """A private ``softhsm2.conf`` whose token directory is ``hsm_dir/tokens``."""
    tokens = hsm_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = hsm_dir / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    return conf


def setup_softhsm(hsm_dir: Path, module: str) -> Path:
    """Write a private ``softhsm2.conf`` under ``hsm_dir`` and point this process at it."""
    conf = write_softhsm_conf(hsm_dir)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ[MODULE_ENV] = module
    return conf


def init_token(hsm_dir: Path, module: str, label: str, *, conf: Path | None = None) -> Token:
    """Initialise a fresh token ``label`` with random SO and user PINs (in the SoftHSM2
    configuration ``conf``, default: this process's)."""
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    pin_file = hsm_dir / f"{label}.pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(pin)
    proc = subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(conf),
        check=False,
    )
    if proc.returncode != 0:
        raise DemoHSMError(
            f"softhsm2-util could not initialise token {label}: "
            f"{(proc.stderr or proc.stdout).strip()[:300]}"
        )
    return Token(label, module, pin_file)


def _env(conf: Path | None) -> dict[str, str]:
    env = os.environ.copy()
    if conf is not None:
        env["SOFTHSM2_CONF"] = str(conf)
    return env
