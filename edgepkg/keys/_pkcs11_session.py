"""PKCS#11 library and sessions (python-pkcs11): the layer every token operation goes through.

Private keys are generated inside the token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false and
are only ever *used* there: ECDSA signing (CKM_ECDSA over a SHA-256 digest computed here) and
ECDH (CKM_ECDH1_DERIVE into a short-lived session secret whose value is the shared secret).

Library and session lifetime: one loaded library per module path per process, one cached,
logged-in read/write session per token, every operation under the module's lock (PKCS#11
sessions are not meant to be used by two threads at once, and closing any session logs the whole
application out). A token initialised after the library was loaded, a closed session or a fork
are handled by re-initialising the library once and retrying.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edgepkg.errors import HSMError
from edgepkg.keys._uri import Pkcs11Uri

try:  # python-pkcs11 is the [hsm] extra
    import pkcs11
    from pkcs11 import exceptions as p11e
except ImportError:  # pragma: no cover - exercised only without the extra
    pkcs11 = None  # type: ignore[assignment]

T = TypeVar("T")

# DER of the OID prime256v1 / secp256r1 (ECParameters namedCurve)
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")



def _need_pkcs11() -> None:
    if pkcs11 is None:
        raise HSMError("PKCS#11 support needs python-pkcs11: pip install 'edgepkg[hsm]'")


# --- library and sessions --------------------------------------------------------------------


@dataclass
class _Cached:
    session: Any
    pin: str | None


class _Module:
    """One loaded PKCS#11 library; serialises every use of it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._lib: Any = None
        self._pid = os.getpid()
        self._sessions: dict[tuple[str, bytes], _Cached] = {}
        self.stale = False

    def lib(self) -> Any:
        if self._lib is None:
            _need_pkcs11()
            if not os.path.isfile(self.path):
                raise HSMError(
                    f"PKCS#11 module {self.path} does not exist: install it (e.g. Debian's "
                    "softhsm2) or point module-path= / $EDGEPKG_PKCS11_MODULE at the right library"
                )
            try:
                self._lib = _shared_lib(self.path)
            except Exception as exc:  # the Cython layer raises RuntimeError and others
                raise HSMError(f"cannot load PKCS#11 module {self.path}: {exc}") from exc
        if self.stale or self._pid != os.getpid():
            self.reinitialize()
        return self._lib

    def reinitialize(self) -> None:
        self._sessions.clear()  # handles die with the finalize
        self.stale = False
        self._pid = os.getpid()
        if self._lib is None:
            return
        with contextlib.suppress(Exception):
            self._lib.finalize()
        try:
            self._lib.initialize()
        except Exception as exc:
            raise HSMError(f"cannot re-initialise PKCS#11 module {self.path}: {exc}") from exc

    def _matching(self, uri: Pkcs11Uri) -> list[Any]:
        found = []
        for token in self.lib().get_tokens():
            if uri.token is not None and token.label != uri.token:
                continue
            serial = token.serial.decode("ascii", "replace").strip()
            if uri.serial is not None and serial != uri.serial:
                continue
            if uri.manufacturer is not None and token.manufacturer_id != uri.manufacturer:
                continue
            if uri.model is not None and token.model != uri.model:
                continue
            if not (token.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED):
                continue
            found.append(token)
        return found

    def find_token(self, uri: Pkcs11Uri) -> Any:
        tokens = self._matching(uri)
        if not tokens:  # a token initialised after we loaded the library is not seen until then
            self.reinitialize()
            tokens = self._matching(uri)
        if not tokens:
            present = sorted(
                t.label
                for t in self.lib().get_tokens()
                if t.flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
            )
            raise HSMError(
                f"no PKCS#11 {uri.describe_token()} in module {self.path}; "
                f"initialised tokens: {', '.join(map(repr, present)) or 'none'}"
            )
        if len(tokens) > 1:
            raise HSMError(
                f"{len(tokens)} tokens match {uri.describe_token()}: add token=LABEL or serial= "
                "to the pkcs11: URI"
            )
        return tokens[0]

    def session(self, token: Any, pin: str | None) -> Any:
        key = (token.label, bytes(token.serial))
        cached = self._sessions.get(key)
        if cached is not None:
            if pin is None or cached.pin == pin:
                return cached.session
            self._drop(key)
        try:
            try:
                session = token.open(rw=True, user_pin=pin)
            except p11e.UserAlreadyLoggedIn:
                # someone else in this process logged in outside our cache: start clean, once
                self.reinitialize()
                token = self.find_token_by_label(token.label, token.serial)
                session = token.open(rw=True, user_pin=pin)
        except p11e.PinIncorrect:
            raise HSMError(f"wrong PIN for PKCS#11 token {token.label!r}") from None
        except p11e.PinLocked:
            raise HSMError(
                f"the user PIN of token {token.label!r} is locked: the security officer must "
                "reset it"
            ) from None
        except p11e.UserPinNotInitialized:
            raise HSMError(f"token {token.label!r} has no user PIN set yet") from None
        except (p11e.PinInvalid, p11e.PinLenRange):
            raise HSMError(
                f"the PIN given for token {token.label!r} is not a valid PIN (length/characters)"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HSMError(f"cannot open a session on token {token.label!r}: {_name(exc)}") from exc
        self._sessions[key] = _Cached(session, pin)
        return session

    def find_token_by_label(self, label: str, serial: bytes) -> Any:
        for token in self.lib().get_tokens():
            if token.label == label and bytes(token.serial) == bytes(serial):
                return token
        raise HSMError(f"PKCS#11 token {label!r} disappeared")

    def _drop(self, key: tuple[str, bytes]) -> None:
        cached = self._sessions.pop(key, None)
        if cached is not None:
            with contextlib.suppress(Exception):
                cached.session.close()

    def run(self, uri: Pkcs11Uri, pin: str | None, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` on the token ``uri`` names, logged in when ``pin`` is given."""
        with self.lock:
            for attempt in (0, 1):
                token = self.find_token(uri)
                session = self.session(token, pin)
                try:
                    return fn(session)
                except (
                    p11e.SessionHandleInvalid,
                    p11e.SessionClosed,
                    p11e.DeviceRemoved,
                    p11e.TokenNotPresent,
                    p11e.UserNotLoggedIn,
                    p11e.ObjectHandleInvalid,
                    p11e.KeyHandleInvalid,
                ) as exc:
                    if attempt:
                        raise HSMError(
                            f"PKCS#11 operation failed on token {token.label!r}: {_name(exc)}"
                        ) from exc
                    self.reinitialize()
                except p11e.PKCS11Error as exc:
                    raise HSMError(
                        f"PKCS#11 token {token.label!r} refused the operation: {_name(exc)}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _shared_lib(path: str) -> Any:
    """python-pkcs11 caches libraries by the path string: reuse one loaded under another name
    for the same file (a second C_Initialize would fail), so other code calling
    ``pkcs11.lib(path)`` and this module share one initialised library."""
    real = os.path.realpath(path)
    for name in list(pkcs11._loaded):
        if os.path.realpath(name) == real:
            return pkcs11.lib(name)
    return pkcs11.lib(path)


def pkcs11_lib(module_path: str | None = None) -> Any:
    """The process-wide python-pkcs11 ``lib`` for a module (default: $EDGEPKG_PKCS11_MODULE or
    SoftHSM2), for code that needs raw PKCS#11 access next to edgepkg's keys."""
    mod = module_for(Pkcs11Uri(module_path=module_path))
    with mod.lock:
        return mod.lib()


def _name(exc: BaseException) -> str:
    text = str(exc)
    return type(exc).__name__ + (f" ({text})" if text else "")


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def module_for(uri: Pkcs11Uri) -> _Module:
    path = os.path.abspath(uri.module())
    key = os.path.realpath(path)  # one lock and one library per file, whatever its name
    with _modules_lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _modules[key] = _Module(path)
        return mod


def _after_fork() -> None:
    for mod in _modules.values():
        mod.stale = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


