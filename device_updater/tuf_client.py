"""TUF client for the device: python-tuf's ``ngclient.Updater`` does every verification.

This module adds only what the device needs around it:

* :class:`DeviceFetcher`, a ``FetcherInterface`` on ``requests`` that signs every request with
  the device key (when given a :class:`~device_updater.http.DeviceAuth`), applies connect/read
  timeouts and the Updater's length limits, and **resumes** target downloads across restarts:
  bytes land in a ``.partial`` file keyed by the download URL and a later attempt continues with
  an HTTP ``Range`` request. The Updater then verifies the complete file against the TUF length
  and hashes exactly as for a fresh download; a partial file that fails verification is deleted.
* :class:`TufSession`, one ``Updater`` per update cycle, bootstrapped from the trusted root whose
  SHA-256 must equal the anchor held in the device's token (a swapped root on disk is refused).
* Typed errors: transport problems apart from verification failures, and expired metadata apart
  from both (it blocks new installs, never the running model).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import requests
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from device_updater._deadline import deadline, expired, watch_session

# The error classes live in device_updater.errors so that the pure failure table
# (device_updater.outcomes) can name them without importing tuf and requests.
from device_updater.errors import (
    MetadataExpiredError as MetadataExpiredError,
    TargetNotFoundError as TargetNotFoundError,
    TrustAnchorMismatchError as TrustAnchorMismatchError,
    TufError as TufError,
    TufTransportError as TufTransportError,
    TufVerificationError as TufVerificationError,
)
from device_updater.http import DeviceAuth
from edgepkg._atomic import atomic_write_bytes

log = logging.getLogger(__name__)

BOOTSTRAP_ROOT_NAME = "trusted-root.json"
MAX_ROOT_BYTES = 512 * 1024
# A download may take connect + 2 x read timeout, plus its signed length at this floor rate: a
# server trickling bytes inside the read timeout cannot hold the update cycle forever.
MIN_DOWNLOAD_RATE = 16 * 1024  # bytes per second


def _translate(exc: Exception, what: str) -> TufError:
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return MetadataExpiredError(f"{what}: signed metadata has expired ({exc})")
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return TufVerificationError(f"{what}: download longer than signed length ({exc})")
    if isinstance(exc, tuf_exc.DownloadError):
        cause = exc.__cause__ or exc
        return TufTransportError(f"{what}: download failed ({cause})")
    if isinstance(exc, tuf_exc.RepositoryError):
        return TufVerificationError(
            f"{what}: TUF verification failed ({exc.__class__.__name__}: {exc})")
    if isinstance(exc, OSError):
        return TufError(f"{what}: local storage error ({exc})")
    return TufError(f"{what}: {exc}")


class DeviceFetcher(FetcherInterface):
    """``requests`` fetcher: device-signed headers, timeouts, resumable target downloads.

    ``resume_dir`` holds ``<sha256(url)>.partial`` files; resume applies only to URLs under one of
    ``resume_prefixes`` (the targets base URL), never to metadata.
    """

    def __init__(
        self,
        *,
        auth: DeviceAuth | None = None,
        session: requests.Session | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        chunk_size: int = 64 * 1024,
        resume_dir: str | os.PathLike[str] | None = None,
        resume_prefixes: tuple[str, ...] = (),
    ) -> None:
        self._auth = auth
        self._session = watch_session(session or requests.Session())
        self._timeout = (connect_timeout, read_timeout)
        self._chunk = chunk_size
        self._resume_dir = Path(resume_dir) if resume_dir is not None else None
        self._resume_prefixes = resume_prefixes
        self.requests_made = 0
        self.bytes_received = 0

    # -- plain fetch (metadata and non-resumable downloads) --------------------------------
    def _get(self, url: str, extra: dict[str, str] | None = None) -> requests.Response:
        headers = dict(extra or {})
        if self._auth is not None:
            headers.update(self._auth.headers("GET", url, b""))
        self.requests_made += 1
        try:
            resp = self._session.get(url, headers=headers, stream=True, timeout=self._timeout,
                                     allow_redirects=False)
        except requests.Timeout as exc:
            raise tuf_exc.SlowRetrievalError(f"timed out fetching {url}") from exc
        except requests.RequestException as exc:
            raise tuf_exc.DownloadError(f"cannot fetch {url}: {exc.__class__.__name__}") from exc
        if expired():  # headers cut by the deadline: not an answer
            resp.close()
            raise tuf_exc.SlowRetrievalError(f"GET {url}: answer cut at the deadline")
        if resp.status_code >= 300:
            status = resp.status_code
            resp.close()
            raise tuf_exc.DownloadHTTPError(f"GET {url}: HTTP {status}", status)
        return resp

    def _chunks(self, resp: requests.Response) -> Iterator[bytes]:
        try:
            for chunk in resp.iter_content(self._chunk):
                self.bytes_received += len(chunk)
                yield chunk
            if expired():  # a body cut by the deadline must not reach verification as complete
                raise tuf_exc.SlowRetrievalError("download cut at the deadline")
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise tuf_exc.SlowRetrievalError(f"connection lost: {exc.__class__.__name__}") from exc
        except requests.RequestException as exc:
            raise tuf_exc.DownloadError(f"download failed: {exc.__class__.__name__}") from exc
        finally:
            resp.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._chunks(self._get(url))

    # -- resumable download ----------------------------------------------------------------
    def partial_path(self, url: str) -> Path | None:
        if self._resume_dir is None or not url.startswith(self._resume_prefixes or ("\0",)):
            return None
        return self._resume_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.partial"

    def deadline_for(self, max_length: int) -> float:
        """Seconds a download of at most ``max_length`` bytes may take, all reads together."""
        return self._timeout[0] + 2 * self._timeout[1] + max_length / MIN_DOWNLOAD_RATE

    @contextlib.contextmanager
    def _bounded(self, url: str, max_length: int) -> Iterator[None]:
        limit = self.deadline_for(max_length)
        with deadline(limit) as watch:
            try:
                yield
            except tuf_exc.DownloadError:
                if watch.fired:
                    raise tuf_exc.SlowRetrievalError(
                        f"{url}: not downloaded within {limit:.0f} s") from None
                raise

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        part = self.partial_path(url)
        if part is None:
            with self._bounded(url, max_length), super().download_file(url, max_length) as fh:
                yield fh
            return
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._bounded(url, max_length):
                self._download_resumable(url, part, max_length)
        except tuf_exc.DownloadError:
            raise
        except OSError as exc:
            raise tuf_exc.DownloadError(f"cannot write {part}: {exc}") from exc
        try:
            with open(part, "rb") as fh:
                yield fh
        except BaseException:
            # the caller refused the bytes (length/hash mismatch) or failed to copy: start over
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        with contextlib.suppress(FileNotFoundError):
            part.unlink()

    def _download_resumable(self, url: str, part: Path, max_length: int) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > max_length:
            part.unlink()
            have = 0
        if have == max_length and have > 0:
            return  # complete already; the caller verifies it
        extra = {"Range": f"bytes={have}-"} if have else {}
        try:
            resp = self._get(url, extra)
        except tuf_exc.DownloadHTTPError as exc:
            if exc.status_code == 416 and have:
                part.unlink()
                return self._download_resumable(url, part, max_length)
            raise
        if have and resp.status_code == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                resp.close()
                part.unlink()
                raise tuf_exc.DownloadError(
                    f"server answered an unexpected range {content_range!r}")
            mode, received = "ab", have
            log.info("resuming download", extra={"url": url, "offset": have})
        else:
            mode, received = "wb", 0  # 200: the server ignored Range; start from zero
        with open(part, mode) as out:
            for chunk in self._chunks(resp):
                received += len(chunk)
                if received > max_length:
                    out.close()
                    part.unlink()
                    raise tuf_exc.DownloadLengthMismatchError(
                        f"download exceeds the signed length of {max_length} bytes")
                out.write(chunk)
            # No fsync: the partial file is only a resume cache. Every byte is checked against the
            # TUF length and hashes before use, so data lost in a power cut costs a re-download,
            # never trust; a 500 MB flush on the install path costs seconds.


def root_sha256(root_bytes: bytes) -> str:
    return hashlib.sha256(root_bytes).hexdigest()


def check_root_bytes(root_bytes: bytes) -> None:
    """Refuse bytes that are not root metadata (size, JSON, signed type)."""
    if len(root_bytes) > MAX_ROOT_BYTES:
        raise TufVerificationError(f"root metadata exceeds {MAX_ROOT_BYTES} bytes")
    try:
        md = Metadata.from_bytes(root_bytes)
    except Exception as exc:  # python-tuf raises several types for malformed input
        raise TufVerificationError(f"not valid TUF root metadata: {exc}") from exc
    if not isinstance(md.signed, Root):
        raise TufVerificationError(f"not root metadata (type {md.signed.type})")


def install_trusted_root(tuf_dir: str | os.PathLike[str], root_bytes: bytes) -> str:
    """Store the enrollment-time trusted root under ``tuf_dir``; return its SHA-256 (the anchor)."""
    check_root_bytes(root_bytes)
    d = Path(tuf_dir)
    (d / "metadata").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / BOOTSTRAP_ROOT_NAME, root_bytes, 0o644)
    return root_sha256(root_bytes)


def load_anchored_root(tuf_dir: str | os.PathLike[str], anchor_sha256: str) -> bytes:
    """Read the bootstrap root and refuse it unless its SHA-256 equals the token's anchor."""
    path = Path(tuf_dir) / BOOTSTRAP_ROOT_NAME
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_ROOT_BYTES + 1)
    except OSError as exc:
        raise TufError(f"trusted root {path} cannot be read ({exc}); re-enroll the device") from exc
    if root_sha256(data) != anchor_sha256.lower():
        raise TrustAnchorMismatchError(
            f"{path} does not match the root anchor held in the device token: the file was "
            "replaced or corrupted; refusing to trust it")
    return data


class TufSession:
    """One update cycle's view of the repository: one ``ngclient.Updater``."""

    def __init__(
        self,
        metadata_dir: str | os.PathLike[str],
        metadata_url: str,
        targets_url: str,
        *,
        bootstrap_root: bytes,
        fetcher: FetcherInterface,
        target_dir: str | os.PathLike[str],
        config: UpdaterConfig | None = None,
    ) -> None:
        Path(metadata_dir).mkdir(parents=True, exist_ok=True)
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        self.target_dir = Path(target_dir)
        try:
            self.updater = Updater(
                os.fspath(metadata_dir), metadata_url, os.fspath(target_dir), targets_url,
                fetcher, config or UpdaterConfig(app_user_agent="edge-updater"),
                bootstrap=bootstrap_root,
            )
        except Exception as exc:
            raise _translate(exc, "loading the trusted root") from exc
        self._refreshed = False

    def refresh(self) -> None:
        if self._refreshed:
            return
        try:
            self.updater.refresh()
        except Exception as exc:
            raise _translate(exc, "refreshing TUF metadata") from exc
        self._refreshed = True

    def target_info(self, name: str) -> TargetFile:
        self.refresh()
        try:
            info = self.updater.get_targetinfo(name)
        except Exception as exc:
            raise _translate(exc, f"looking up target {name}") from exc
        if info is None:
            raise TargetNotFoundError(f"target {name} is not in the signed repository metadata")
        return info

    def local_path(self, info: TargetFile) -> Path:
        return self.target_dir / _quote_target(info.path)

    def cached(self, info: TargetFile) -> Path | None:
        found = self.updater.find_cached_target(info, os.fspath(self.local_path(info)))
        return Path(found) if found else None

    def fetch(self, info: TargetFile) -> Path:
        """The verified local file for ``info``: cached if its hashes match, else downloaded."""
        cached = self.cached(info)
        if cached is not None:
            return cached
        try:
            return Path(self.updater.download_target(info, os.fspath(self.local_path(info))))
        except Exception as exc:
            raise _translate(exc, f"downloading target {info.path}") from exc


def _quote_target(path: str) -> str:
    from urllib.parse import quote

    return quote(path, "")
