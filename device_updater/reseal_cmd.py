"""``edge-updater reseal``: bind the slot key to the current TPM PCR values (after an OS update).

    EDGE_UPDATER_TPM_OWNER_AUTH=... edge-updater reseal [--pcrs 0,2,4,7] [--json]

For a legitimate change of the measured boot chain (firmware, boot loader, kernel, Secure Boot
settings): after the device has booted the new chain, an administrator who trusts it runs this
with the TPM owner authorisation. The slot key comes out of its owner-authorised copy and is
sealed again to the PCR values measured now; models on disk open again and the daemon resumes at
its next cycle. Without the owner authorisation the TPM refuses (exit 1). Only for
``[keystore] type = "tpm"`` with ``pcr_binding`` on. Kept apart from ``cli.py`` (its own
module, registered there by one line).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from device_updater.config import Config
from device_updater.errors import ConfigError


def _pcr_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--pcrs {text!r}: give PCR indices separated by commas, e.g. 0,2,4,7") from None


def register(sub: Any) -> None:
    r = sub.add_parser(
        "reseal", help="re-seal the slot key to the current TPM PCR values (after an OS update)",
        description="With the TPM owner authorisation ($EDGE_UPDATER_TPM_OWNER_AUTH), bind the "
                    "key that seals the model slots to the PCR values measured now. Run it "
                    "after a legitimate OS or firmware update; see docs/device-integrator.md.")
    r.add_argument("--pcrs", type=_pcr_list, metavar="N,N,...",
                   help="PCRs (sha256 bank) to bind to from now on (default: those the key is "
                        "sealed to now)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=_cmd_reseal)


def _cmd_reseal(args: argparse.Namespace, config: Config) -> int:
    if config.keystore_type != "tpm" or config.pcr_binding is False:
        raise ConfigError("reseal needs [keystore] type = \"tpm\" with pcr_binding on: this "
                          "device's slots are not bound to TPM PCR values")
    from device_updater.keystore_tpm import keystore_from_config

    guard = keystore_from_config(config).slot_key_guard()
    assert guard is not None  # pcr_binding is on
    sealed = guard.reseal(args.pcrs)
    doc = {"resealed": True, "bank": "sha256", "pcrs": list(sealed.pcrs),
           "sealed_at": sealed.sealed_at}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"slot key re-sealed to the current values of PCRs "
              f"sha256:{','.join(map(str, sealed.pcrs))}")
    return 0
