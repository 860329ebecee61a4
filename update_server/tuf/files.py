"""Read-only serving of the TUF repository directory (``metadata/`` and ``targets/``).

Range requests (206/416), ETag + If-None-Match (304) and Last-Modified come from Werkzeug's
conditional responses. Metadata is ``no-cache`` (clients revalidate; timestamp.json changes
often); targets are hash-prefixed, so they are immutable and cached for a year. Paths are
contained: no ``..``, no absolute paths, no hidden files, and symlinks may not lead outside
the directory. The same directory can be served by nginx or a CDN instead (docs/operator.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import threading
from pathlib import Path

from flask import Blueprint, Response, current_app, request, send_file
from flask.typing import ResponseReturnValue
from werkzeug.security import safe_join

from update_server.config import ServerConfig
from update_server.errors import NotFoundError

bp = Blueprint("tuf", __name__, url_prefix="/tuf")

_SMALL = 1024 * 1024
_etag_lock = threading.Lock()
_etag_cache: dict[tuple[str, int, int, int], str] = {}


def _resolve(sub_dir: str, subpath: str) -> Path:
    cfg: ServerConfig = current_app.config["EDGEPKG"]
    if cfg.repo_dir is None:
        raise NotFoundError("this server has no TUF repository configured")
    if not subpath or any(p.startswith(".") for p in subpath.split("/")) or "\\" in subpath:
        raise NotFoundError("no such file")
    base = os.path.realpath(os.path.join(cfg.repo_dir, sub_dir))
    joined = safe_join(base, subpath)
    if joined is None:
        raise NotFoundError("no such file")
    real = os.path.realpath(joined)
    if os.path.commonpath([base, real]) != base:
        raise NotFoundError("no such file")
    return Path(real)


def _etag(path: Path, st: os.stat_result) -> str:
    if st.st_size > _SMALL:
        return f"{st.st_size:x}-{st.st_mtime_ns:x}"
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    with _etag_lock:
        tag = _etag_cache.get(key)
    if tag is None:
        tag = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        with _etag_lock:
            if len(_etag_cache) > 4096:
                _etag_cache.clear()
            _etag_cache[key] = tag
    return tag


def _serve(sub_dir: str, subpath: str, cache_control: str) -> ResponseReturnValue:
    path = _resolve(sub_dir, subpath)
    try:
        st = os.stat(path)
    except OSError:
        raise NotFoundError("no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotFoundError("no such file")
    mimetype = "application/json" if path.suffix == ".json" else "application/octet-stream"
    small = _small_file(path, st) if st.st_size <= _SMALL else None
    if small is not None:
        # Metadata polls (timestamp.json every few minutes from every device): bytes and ETag
        # from memory, keyed by (path, mtime, size, inode); no open/read/hash per request.
        data, tag = small
        resp = Response(data, mimetype=mimetype)
        resp.set_etag(tag)
        resp.last_modified = dt.datetime.fromtimestamp(int(st.st_mtime), dt.UTC)
        resp.make_conditional(request, accept_ranges=True, complete_length=len(data))
    else:
        resp = send_file(
            path,
            mimetype=mimetype,
            conditional=True,
            etag=_etag(path, st),
            last_modified=st.st_mtime,
            max_age=None,
        )
    resp.headers["Cache-Control"] = cache_control
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


_SMALL_CACHE_BYTES = 16 * 1024 * 1024
_small_cache: dict[tuple[str, int, int, int], tuple[bytes, str]] = {}
_small_cache_size = [0]


def _small_file(path: Path, st: os.stat_result) -> tuple[bytes, str] | None:
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    with _etag_lock:
        hit = _small_cache.get(key)
    if hit is not None:
        return hit
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) != st.st_size:
        return None  # changed while reading: serve from disk this time
    entry = (data, hashlib.sha256(data).hexdigest()[:32])
    with _etag_lock:
        if _small_cache_size[0] + len(data) > _SMALL_CACHE_BYTES:
            _small_cache.clear()
            _small_cache_size[0] = 0
        _small_cache[key] = entry
        _small_cache_size[0] += len(data)
    return entry


@bp.get("/metadata/<path:filename>")
def metadata(filename: str) -> ResponseReturnValue:
    cfg: ServerConfig = current_app.config["EDGEPKG"]
    cc = "no-cache" if cfg.metadata_max_age_s <= 0 else f"public, max-age={cfg.metadata_max_age_s}"
    return _serve("metadata", filename, cc)


@bp.get("/targets/<path:filename>")
def targets(filename: str) -> ResponseReturnValue:
    cfg: ServerConfig = current_app.config["EDGEPKG"]
    return _serve("targets", filename, f"public, max-age={cfg.targets_max_age_s}, immutable")
