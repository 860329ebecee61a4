"""Local power-cut campaign: SIGKILL the install at every persisted step and at random instants.

This module is also the *driver*: ``python tests/e2e/test_device_powercut_local.py ROOT TARGET``
runs start-up recovery (``run_recovery``) and then a minimal install loop through every phase
(persist before acting) using the real ``StateStore`` / ``SlotStore`` / ``BundleSealer``. With
``KILL_AT=N`` it SIGKILLs itself right before or after the N-th *persist point* (a state save, a
slot switch/discard, every rename that sets the previous version aside, puts it back or deletes
it, and every few chunks of a slot write). After each kill the test checks the
invariant, then restarts the driver and checks that it converges:

* the state file is readable (never moved aside as corrupt);
* the active slot decrypts to a model whose SHA-256 equals its signed manifest value, and that
  value is one of the genuine releases;
* kills in a row past the crash-loop cap give the target up (REJECTED/ROLLED_BACK, reason
  recorded) and leave the previous version running;
* the update reaches its outcome: the good release is committed (or, if the kill hit its trial,
  rolled back with the reason recorded), the holdout-failing release is rejected, the release
  whose trial fails is rolled back; the other slot then holds the previous good version, intact
  (the one set aside when the candidate's write began is put back after a reject/rollback).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # driver mode: make the repository importable
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402 (after the sys.path set-up above)
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402 (after the sys.path set-up above)

from device_updater.recovery import run_recovery  # noqa: E402 (after the sys.path set-up above)
from device_updater.slots import BundleSealer, ModelSummary, SlotStore  # noqa: E402 (after the sys.path set-up above)
from device_updater.state import (  # noqa: E402 (after the sys.path set-up above)
    Committed,
    Downloaded,
    Installed,
    Phase,
    Reject,
    RollBack,
    Start,
    Switched,
    UpdateState,
    Validated,
    Verified,
    transition,
)
from device_updater.state_store import StateStore  # noqa: E402 (after the sys.path set-up above)
from edgepkg.keys._software import FileRecipientKey  # noqa: E402 (after the sys.path set-up above)

MODEL_BYTES = 1 << 20
CHUNK = 64 * 1024
FAILS_VALIDATION = {"3.0.0"}
FAILS_TRIAL = {"4.0.0"}


def release(version: str) -> tuple[ModelSummary, bytes]:
    """The genuine release ``version``: deterministic bytes and their signed summary."""
    data = hashlib.shake_256(b"model " + version.encode()).digest(MODEL_BYTES)
    return ModelSummary(name="cam", version=version, sha256=hashlib.sha256(data).hexdigest(),
                        length=len(data), format="onnx"), data


SIGNED = {v: release(v)[0] for v in ("0.9.0", "1.0.0", "2.0.0", "3.0.0", "4.0.0")}


# --- driver ------------------------------------------------------------------------------------


class _Killer:
    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class _Store(StateStore):
    def __init__(self, path: Path, k: _Killer) -> None:
        super().__init__(path)
        self.k = k

    def save(self, state: UpdateState) -> None:
        self.k.tick()
        super().save(state)
        self.k.tick()


class _Slots(SlotStore):
    def __init__(self, root: Path, k: _Killer, sealer: BundleSealer) -> None:
        super().__init__(root, sealer=sealer)
        self.k = k

    def switch_to(self, name: str):  # type: ignore[no-untyped-def]
        self.k.tick()
        info = super().switch_to(name)
        self.k.tick()
        return info

    def discard(self, name: str) -> None:
        self.k.tick()
        super().discard(name)
        self.k.tick()

    def _persisted(self, what: str) -> None:  # every rename of a set-aside previous version
        self.k.tick()


def load_key(root: Path) -> FileRecipientKey:
    key = serialization.load_pem_private_key((root / "device-key.pem").read_bytes(), None)
    return FileRecipientKey(key, "test device key")  # type: ignore[arg-type]


def drive(root: Path, target: str, kill_at: int = 0) -> int:
    """Recover, then install ``target``; SIGKILL self at persist point ``kill_at`` (0: never)."""
    k = _Killer(kill_at)
    store = _Store(root / "state.json", k)
    slots = _Slots(root / "slots", k, BundleSealer(load_key(root), chunk_size=CHUNK))
    print("ready", flush=True)
    run_recovery(store, slots, time.time())
    summary, data = release(target)
    st = store.load()

    def save(s: UpdateState) -> UpdateState:
        store.save(s)
        return s

    def abandon(slot: str) -> None:
        """What the agent does with a refused candidate's slot: the previous version back."""
        if not slots.restore_displaced(slot):
            slots.discard(slot)

    for _ in range(50):
        now = time.time()
        if st.phase.terminal:
            active = slots.active()
            if (active is not None and active.version == target) or st.version == target:
                return 0
            st = save(transition(st, Start("cam", target, f"models/cam/{target}"), now))
        elif st.phase is Phase.DOWNLOADING:
            st = save(transition(st, Downloaded(summary), now))
        elif st.phase is Phase.VERIFYING:
            st = save(transition(st, Verified(summary, slots.inactive_name()), now))
        elif st.phase is Phase.INSTALLING:
            with slots.begin_write(summary, slot=st.slot) as w:
                for i in range(0, len(data), CHUNK):
                    w.write(data[i:i + CHUNK])
                    if (i // CHUNK) % 4 == 0:
                        k.tick()
                w.commit()
            k.tick()
            st = save(transition(st, Installed(), now))
        elif st.phase is Phase.VALIDATING:
            slots.verify(st.slot)  # type: ignore[arg-type]
            if target in FAILS_VALIDATION:
                st = save(transition(st, Reject("holdout top1_accuracy 0.31 below minimum 0.80",
                                                active=slots.active_name()), now))
                abandon(st.slot)  # type: ignore[arg-type]
            else:
                st = save(transition(st, Validated(), now))
        elif st.phase is Phase.SWITCHING:
            slots.switch_to(st.slot)  # type: ignore[arg-type]
            st = save(transition(st, Switched(), now))
        elif st.phase is Phase.TRIAL:
            if target in FAILS_TRIAL:
                st = save(transition(st, RollBack("app reported failures", active=st.slot),  # type: ignore[arg-type]
                                     now))
                slots.switch_to(st.expected_active)  # type: ignore[arg-type]
                abandon(st.slot)  # type: ignore[arg-type]
            else:
                st = save(transition(st, Committed("healthy"), now))
                slots.drop_displaced(st.slot)  # type: ignore[arg-type]
    return 2


# --- the test side ---------------------------------------------------------------------------


def _initial(root: Path) -> None:
    """A device running 1.0.0 (slot a), with 0.9.0 kept in slot b."""
    root.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    (root / "device-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    slots = SlotStore(root / "slots", sealer=BundleSealer(load_key(root), chunk_size=CHUNK))
    for version, slot in (("1.0.0", "a"), ("0.9.0", "b")):
        summary, data = release(version)
        slots.write(summary, [data], slot=slot)
    slots.switch_to("a")


def _fork_drive(root: Path, target: str, kill_at: int = 0) -> int:
    """Run the driver in a forked child (no interpreter start-up); its exit code or -signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        rc = 3
        try:
            rc = drive(root, target, kill_at)
        except BaseException:
            traceback.print_exc()
        os._exit(rc)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    if rc not in (0, -signal.SIGKILL):
        raise AssertionError(f"driver failed with {rc}")
    return rc


def _run(root: Path, target: str, kill_at: int = 0, *, timeout: float = 60) -> int:
    """Run the driver script as a fresh subprocess (exec), like the daemon after a reboot."""
    env = dict(os.environ, KILL_AT=str(kill_at))
    p = subprocess.run([sys.executable, __file__, str(root), target], env=env, cwd=REPO,
                       capture_output=True, timeout=timeout, check=False)
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"driver failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    return p.returncode


def _check_invariant(root: Path) -> tuple[UpdateState, str]:
    st = StateStore(root / "state.json").load()
    assert not (root / "state.json.corrupt").exists(), "state file was found corrupt"
    slots = SlotStore(root / "slots", sealer=BundleSealer(load_key(root), chunk_size=CHUNK))
    active = slots.active_name()
    assert active is not None, "no active slot"
    info = slots.verify(active)  # decrypts and checks the signed sha256/length
    assert SIGNED[info.version] == info.summary, "active slot holds a model that is not genuine"
    return st, info.version


def _check_outcome(root: Path, target: str) -> None:
    st, active = _check_invariant(root)
    assert st.phase.terminal and st.version == target, st
    if "crash loop" in (st.reason or ""):  # too many kills in a row: target given up, reported
        assert st.phase in (Phase.REJECTED, Phase.ROLLED_BACK) and active == "1.0.0", st
    elif target in FAILS_VALIDATION:
        assert st.phase is Phase.REJECTED and active == "1.0.0", st
    elif target in FAILS_TRIAL:
        assert st.phase is Phase.ROLLED_BACK and active == "1.0.0", st
    elif st.phase is Phase.ROLLED_BACK:  # the kill landed in the trial: rolled back, reported
        assert "restarted during the trial" in (st.reason or "") and active == "1.0.0", st
    else:
        assert st.phase is Phase.COMMITTED and active == target, st
    slots = SlotStore(root / "slots", sealer=BundleSealer(load_key(root), chunk_size=CHUNK))
    other = "b" if slots.active_name() == "a" else "a"
    # The previous good version is kept in the other slot, intact: 1.0.0 beside a committed
    # 2.0.0, else 0.9.0 (the version before 1.0.0) put back where the refused candidate was.
    kept = slots.verify(other)
    assert SIGNED[kept.version] == kept.summary
    assert kept.version == ("1.0.0" if active == target else "0.9.0"), (active, kept.version)
    assert not slots.has_displaced("a") and not slots.has_displaced("b")


def test_power_cut_at_every_persist_point(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _initial(base)
    tried = 0
    for target in ("2.0.0", "3.0.0", "4.0.0"):
        k = 1
        while True:
            work = tmp_path / f"w-{target}-{k}"
            shutil.copytree(base, work)
            rc = _fork_drive(work, target, kill_at=k)
            if rc == 0:  # past the last persist point: the campaign for this target is done
                _check_outcome(work, target)
                break
            tried += 1
            _check_invariant(work)
            # Restart, and cut power again early in the recovery itself every third time.
            if k % 3 == 0 and _fork_drive(work, target, kill_at=1 + k % 4) != 0:
                tried += 1
                _check_invariant(work)
            assert _fork_drive(work, target) == 0
            _check_outcome(work, target)
            shutil.rmtree(work)
            k += 1
    print(f"power-cut kill points tried (every persist point): {tried}")
    assert tried >= 60


def _fork_and_kill_after(root: Path, target: str, delay: float) -> None:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            drive(root, target)
        finally:
            os._exit(0)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_power_cut_at_random_instants(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _initial(base)
    rng = random.Random(20261122)
    tried = 0
    phases: dict[str, int] = {}
    for target in ("2.0.0", "3.0.0", "4.0.0"):
        probe = tmp_path / "probe"
        shutil.copytree(base, probe)
        t0 = time.monotonic()
        assert _fork_drive(probe, target) == 0
        duration = time.monotonic() - t0  # uninterrupted run on this (loaded) machine
        shutil.rmtree(probe)
        for i in range(10):
            root = tmp_path / f"r-{target}-{i}"
            shutil.copytree(base, root)
            # A kill at a random instant, then a second one while recovering from it.
            for delay in (rng.uniform(0.0, duration), rng.uniform(0.0, duration / 2)):
                _fork_and_kill_after(root, target, delay)
                tried += 1
                st, _ = _check_invariant(root)
                phases[st.phase.value] = phases.get(st.phase.value, 0) + 1
            assert _fork_drive(root, target) == 0
            _check_outcome(root, target)
            shutil.rmtree(root)
    print(f"power-cut kill points tried (random instants): {tried}; persisted phase seen "
          f"after the kill: {phases}")
    assert tried == 60


def test_power_cut_of_the_driver_script_as_a_fresh_process(tmp_path: Path) -> None:
    """The same campaign through a real exec'd subprocess (what systemd restarts)."""
    root = tmp_path / "dev"
    _initial(root)
    rng = random.Random(7)
    assert _run(root, "2.0.0", kill_at=12) == -signal.SIGKILL
    _check_invariant(root)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, __file__, str(root), "2.0.0"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdout is not None
        p.stdout.readline()  # "ready": imports done, recovery about to start
        time.sleep(rng.uniform(0.0, 0.05))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        _check_invariant(root)
    assert _run(root, "2.0.0") == 0
    _check_outcome(root, "2.0.0")


if __name__ == "__main__":
    sys.exit(drive(Path(sys.argv[1]), sys.argv[2], int(os.environ.get("KILL_AT", "0"))))
