"""The one error hierarchy of ``device_updater``.

:class:`Error` derives from :class:`edgepkg.errors.Error`, so ``except edgepkg.errors.Error``
catches every deliberate failure of both packages (the CLI maps any of them to exit code 1 with
its message). Errors about *untrusted input* (a download, a holdout file, a persisted file that
may have been damaged by a power cut or an attacker with disk access) derive from
:class:`UntrustedDeviceInputError`; errors about the machine or configuration do not.

Modules that need a more specific error define a subclass of one of these in their own module.
"""

from __future__ import annotations

from edgepkg.errors import Error as _EdgepkgError


class Error(_EdgepkgError):
    """Base of every error raised on purpose by device_updater."""


class UntrustedDeviceInputError(Error):
    """Input from outside the process (network, holdout files, damaged state) is bad or hostile."""


class ConfigError(Error):
    """The updater configuration is missing, malformed or contradictory."""


# --- state machine ---------------------------------------------------------------------------


class StateError(Error):
    """The persisted update state cannot be used as asked."""


class IllegalTransitionError(StateError):
    """The requested state-machine transition is not legal from the current phase."""


class CorruptStateError(StateError, UntrustedDeviceInputError):
    """The state file is unreadable (``StateStore.load`` recovers from this; it never escapes)."""


# --- slots -----------------------------------------------------------------------------------


class SlotError(Error):
    """An A/B slot operation cannot be done (no such slot, slot busy, nothing to roll back to)."""


class NoActiveSlotError(SlotError):
    """No slot is active yet (the device has never installed a model)."""


class SlotIntegrityError(SlotError, UntrustedDeviceInputError):
    """A slot's content does not match its signed manifest value (hash, length, seal)."""


class IncompleteSlotError(SlotError):
    """The slot was never completely written (interrupted install) and cannot be used."""


class SealError(SlotError):
    """At-rest encryption or decryption of a slot failed (wrong device key, tampered data)."""


# --- validation ------------------------------------------------------------------------------


class ValidationError(Error):
    """Holdout validation could not produce a result."""


class HoldoutError(ValidationError, UntrustedDeviceInputError):
    """The holdout set is missing, malformed, too large or inconsistent."""


class RuntimeNotInstalledError(ValidationError):
    """No runtime for the model's format is installed on this device."""


class RunnerFailedError(ValidationError):
    """The runner process failed: bad exit status, malformed output or a runtime error."""


class RunnerCrashedError(RunnerFailedError):
    """The runner process died from a signal (segfault, abort, out of memory kill)."""


class RunnerTimeoutError(RunnerFailedError):
    """The runner process did not finish within its time limit and was killed."""


class PolicyError(ValidationError, UntrustedDeviceInputError):
    """The signed validation policy is malformed (unknown metric, non-numeric bound)."""


# --- events and health -----------------------------------------------------------------------


class EventQueueError(Error):
    """The persistent event queue cannot be used (bad event, unwritable directory)."""


class HealthLogError(Error):
    """A health report is malformed or the health log cannot be written."""


# --- names reserved for the network/keystore side (owned by the daemon modules) --------------


class KeystoreError(Error):
    """The device keystore (PKCS#11 token or development key file) failed or is misconfigured."""


class EnrollmentError(Error):
    """Enrollment with the update server failed or the device is not enrolled."""


class TransportError(Error):
    """The network or the server failed (connection, timeout, 5xx); retry later."""


class ServerRefusedError(Error):
    """The server answered with a definite refusal (4xx) the device cannot fix by retrying."""


class UpdateRefusedError(UntrustedDeviceInputError):
    """An offered update is refused: downgrade, wrong device, unmet requirements, bad signature."""


# --- TUF client (raised by device_updater.tuf_client; here so pure code can name them) -------


class TufError(Error):
    """Base of the TUF client errors."""


class TufTransportError(TufError, TransportError):
    """Metadata or a target could not be downloaded (network, timeout, HTTP error): retry later."""


class TufVerificationError(TufError, UntrustedDeviceInputError):
    """Metadata or a target failed TUF verification (bad signature, rollback, wrong hash...)."""


class MetadataExpiredError(TufVerificationError):
    """Trusted metadata has expired: no new install until the repository re-signs it."""


class TargetNotFoundError(TufVerificationError):
    """The signed targets metadata does not list the requested target."""


class TrustAnchorMismatchError(TufVerificationError):
    """The root on disk is not the one whose SHA-256 is held in the device's token."""


# --- install ---------------------------------------------------------------------------------


class DeltaUnusableError(Error):
    """The delta cannot rebuild the candidate on this device (no running model, or the delta
    is based on another version): install the full bundle instead."""
