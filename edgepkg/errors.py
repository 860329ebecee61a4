"""The one error hierarchy of the ``edgepkg`` package.

Every error carries a message a person can act on. Errors about *untrusted input* (a bundle,
a model file, metadata from the network) derive from :class:`UntrustedInputError`, so callers can
tell "this input is bad or hostile" apart from "this machine is misconfigured".
The CLI maps any :class:`Error` to exit code 1 with its message (traceback only with ``-v``).
"""

from __future__ import annotations


class Error(Exception):
    """Base of every error raised on purpose by edgepkg."""


class UsageError(Error):
    """The caller asked for something that cannot work (bad option combination, bad value)."""


# --- keys ------------------------------------------------------------------------------------


class KeyError_(Error):  # named so it does not shadow builtins.KeyError
    """A key reference cannot be used: missing file, wrong type, bad PIN, token not found."""


class HSMError(KeyError_):
    """The PKCS#11 token refused or failed an operation."""


# --- untrusted input -------------------------------------------------------------------------


class UntrustedInputError(Error):
    """Input from outside (a file, a download, metadata) is malformed, tampered or hostile."""


class FormatError(UntrustedInputError):
    """The model file is not of a supported format, or is malformed for the format it claims."""


class TooLargeError(UntrustedInputError):
    """A size limit was exceeded (manifest, chunk, decompressed output, model section)."""


class BundleError(UntrustedInputError):
    """A bundle cannot be read or trusted."""


class NotABundleError(BundleError):
    """The file does not start with the edgepkg bundle magic."""


class UnsupportedVersionError(BundleError):
    """The bundle format version is not one this build can read."""


class BadSignatureError(BundleError):
    """The manifest signature does not verify with the signer's key."""


class UnknownSignerError(BundleError):
    """The manifest is signed by a key that is not among the trusted keys."""


class NotARecipientError(BundleError):
    """None of the available keys can unwrap the bundle's data key."""


class TamperedError(BundleError):
    """An authenticated part of the bundle (a chunk, the wrapped key, the header) was modified."""


class TruncatedError(BundleError):
    """The bundle ends early (cut at or between chunk boundaries, or inside a section)."""


class DeltaError(UntrustedInputError):
    """A delta cannot be applied: wrong base, corrupt patch, or rebuilt output fails its hash."""


# --- repository ------------------------------------------------------------------------------


class RepoError(Error):
    """The TUF repository refused the operation (version not newer, unknown key, expired...)."""


# --- the device <-> server contract ----------------------------------------------------------


class ProtocolError(UntrustedInputError):
    """A device<->server message is malformed; ``field`` names the offending part and ``code``
    is a stable machine-readable reason (the server answers 400 with both)."""

    def __init__(self, message: str, *, field: str = "", code: str = "bad_request") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


# --- key grants ------------------------------------------------------------------------------


class GrantError(UntrustedInputError):
    """A key grant is malformed, or cannot be used here."""


class GrantExpiredError(GrantError):
    """The grant's expiry time has passed (ask the server for a fresh one)."""


class GrantMismatchError(GrantError):
    """The grant is for another device or another release."""
