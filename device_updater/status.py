"""``edge-updater status``: what is installed and what the updater is doing (read-only).

No network and no token: slot metadata and state files only. With TPM PCR binding, what the
daemon last found about the slot key (``sealed_state``: sealed to another device state, and
why) comes from the file it records that in, not from the TPM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from device_updater.config import Config
from device_updater.enrollment import read_enrollment
from device_updater.errors import EnrollmentError, SealError
from device_updater.events import EventQueue
from device_updater.layout import Layout
from device_updater.pcr_binding import read_sealed_state
from device_updater.slots import SlotStore
from device_updater.state_store import StateStore


class _NoSealer:
    """Status reads slot metadata only; it never decrypts (no token needed)."""

    def seal(self, out: Any, aad: bytes) -> Any:
        raise SealError("status does not write slots")

    def unseal(self, src: Any, aad: bytes) -> Iterator[bytes]:
        raise SealError("status does not decrypt slots")


def status(config: Config) -> dict[str, Any]:
    layout = Layout(config.state_dir)
    out: dict[str, Any] = {"state_dir": str(layout.root), "models": {}}
    try:
        out["device_id"] = read_enrollment(layout).device_id
    except EnrollmentError:
        out["device_id"] = None
    for model in layout.model_names():
        st = StateStore(layout.model_dir(model) / "state.json").load()
        view = SlotStore(layout.model_dir(model) / "slots", sealer=_NoSealer()).checkin_view()
        out["models"][model] = {
            **view, "phase": st.phase.value,
            "version": st.version, "reason": st.reason, "last_outcome": st.last_outcome,
        }
    out["queued_events"] = len(EventQueue(layout.events)) if layout.events.exists() else 0
    out["sealed_state"] = None
    if config.keystore_type == "tpm":
        out["sealed_state"] = read_sealed_state(config.keystore_dir or layout.root / "keystore")
    return out
