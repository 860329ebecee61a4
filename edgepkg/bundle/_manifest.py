"""The signed bundle manifest: a typed value, strict JSON parsing, semantic versions."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edgepkg._json import loads_bounded
from edgepkg.errors import BundleError, TooLargeError, UsageError
from edgepkg.policy import PolicySchemaError, parse_policy
from edgepkg.protocol import InvalidVersionError, is_version, version_key

MANIFEST_SCHEMA = 1
MAX_MANIFEST_BYTES = 1 << 20
FORMATS = ("tensorrt", "edgetpu", "tflm", "tflite", "onnx", "raw")
DELTA_KEYS = ("base_version", "base_sha256", "target_sha256", "target_length", "method")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_version(version: str) -> tuple[Any, ...]:
    """A sort key for a semantic version (SemVer 2.0.0 precedence; build metadata ignored).

    The parser is :mod:`edgepkg.protocol`'s (one copy for every wing); a bad version is a
    :class:`UsageError` here because it comes from the person packaging a release.
    """
    try:
        return version_key(version)
    except InvalidVersionError as exc:
        raise UsageError(str(exc)) from None


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"model name {name!r} must be 1-64 chars of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Manifest:
    """What a bundle promises, signed by a release key. Immutable; JSON is canonical."""

    name: str
    version: str
    format: str
    plaintext_sha256: str
    plaintext_length: int
    created_at: str
    requirements: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] | None = None
    delta: dict[str, Any] | None = None
    compression: str = "zstd"
    chunk_size: int = 1 << 20
    encryption: str = ""
    recipients: tuple[str, ...] = ()
    signer: str = ""
    schema: int = MANIFEST_SCHEMA

    # --- (de)serialisation -------------------------------------------------------------------

    def to_json(self) -> bytes:
        data = asdict(self)
        data["recipients"] = list(self.recipients)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise TooLargeError(f"manifest is {len(raw)} bytes, limit {MAX_MANIFEST_BYTES}")
        # Read before the signature is checked (inspect/unpack): bounded, typed errors only.
        data = loads_bounded(raw, what="manifest", error=BundleError, max_bytes=MAX_MANIFEST_BYTES)
        if not isinstance(data, dict):
            raise BundleError("manifest is not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise BundleError(f"manifest has unknown fields: {sorted(unknown)}")
        try:
            kwargs = dict(data)
            kwargs["recipients"] = tuple(kwargs.get("recipients", ()))
            manifest = cls(**kwargs)
        except TypeError as exc:
            raise BundleError(f"manifest is missing fields: {exc}") from None
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Raise BundleError unless every field has the right type and range."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise BundleError(f"manifest field {what} is invalid")

        need(self.schema == MANIFEST_SCHEMA, f"schema ({self.schema}; this build reads 1)")
        need(isinstance(self.name, str) and bool(_NAME_RE.match(self.name)), "name")
        need(is_version(self.version), "version")
        need(self.format in FORMATS, "format")
        need(
            isinstance(self.plaintext_sha256, str) and bool(_HEX64_RE.match(self.plaintext_sha256)),
            "plaintext_sha256",
        )
        need(_is_int(self.plaintext_length) and self.plaintext_length >= 0, "plaintext_length")
        need(isinstance(self.created_at, str), "created_at")
        need(isinstance(self.requirements, dict), "requirements")
        need(isinstance(self.details, dict), "details")
        # "zstd-chunked": independent per-chunk frames or raw chunks (what this build writes);
        # "zstd": one stream cut into chunks (earlier builds; still read).
        need(self.compression in ("zstd", "zstd-chunked"), "compression")
        need(_is_int(self.chunk_size) and 1024 <= self.chunk_size <= 16 << 20, "chunk_size")
        need(isinstance(self.encryption, str), "encryption")
        need(all(isinstance(r, str) and _HEX64_RE.match(r) for r in self.recipients), "recipients")
        need(isinstance(self.signer, str) and bool(_HEX64_RE.match(self.signer)), "signer")
        if self.policy is not None:
            need(isinstance(self.policy, dict), "policy")
            try:
                # Unknown metric names stay a device-side rejection, as for old manifests.
                parse_policy(self.policy, strict_metric=False)
            except PolicySchemaError as exc:
                raise BundleError(f"manifest field policy is invalid: {exc}") from None
        if self.delta is not None:
            need(isinstance(self.delta, dict) and set(self.delta) == set(DELTA_KEYS), "delta")
            need(is_version(self.delta["base_version"]), "delta.base_version")
            for key in ("base_sha256", "target_sha256"):
                need(bool(_HEX64_RE.match(str(self.delta[key]))), f"delta.{key}")
            need(_is_int(self.delta["target_length"]), "delta.target_length")

    # --- views -------------------------------------------------------------------------------

    @property
    def is_delta(self) -> bool:
        return self.delta is not None

    @property
    def model_sha256(self) -> str:
        """SHA-256 of the model this bundle yields (for a delta: of the rebuilt model)."""
        return self.delta["target_sha256"] if self.delta else self.plaintext_sha256

    @property
    def model_length(self) -> int:
        return int(self.delta["target_length"]) if self.delta else self.plaintext_length

    def summary(self) -> dict[str, Any]:
        """What a TUF target's ``custom`` field and ``inspect`` show about this release."""
        return {
            "kind": "delta" if self.delta else "full",
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "requirements": self.requirements,
            "sha256": self.model_sha256,
            "length": self.model_length,
            "policy": self.policy,
            "bundle_signer": self.signer,
            "delta": (
                {k: self.delta[k] for k in ("base_version", "base_sha256", "method")}
                if self.delta
                else None
            ),
        }


    def tuf_custom(self) -> dict[str, Any]:
        """:meth:`summary` in a form TUF's canonical JSON can sign: it has no floats, so policy
        numbers become decimal strings. Devices take the policy from the signed manifest."""
        out = self.summary()
        if out["policy"]:
            out["policy"] = _no_floats(out["policy"])
        return out


def _no_floats(value: Any) -> Any:
    """Floats (and ints, as before) as decimal strings, through nested tables and lists."""
    if isinstance(value, dict):
        return {k: _no_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_floats(v) for v in value]
    return value if isinstance(value, str) else repr(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_policy(policy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check an operator-given validation policy (see :mod:`edgepkg.policy`) and return it in
    manifest form. The four old keys also accept numeric strings, as they always did."""
    if not policy:
        return None
    data = dict(policy)
    for key in ("min", "max_regression", "max_latency_ratio"):
        if data.get(key) is None:
            data.pop(key, None)
            continue
        try:
            data[key] = float(data[key])
        except (TypeError, ValueError):
            raise UsageError(f"policy {key} must be a number") from None
        if data[key] < 0:
            raise UsageError(f"policy {key} must not be negative")
    if data.get("metric") is None:
        data.pop("metric", None)
    try:
        out = parse_policy(data).to_dict()
    except PolicySchemaError as exc:
        raise UsageError(str(exc)) from None
    if "metric" not in data and set(out) == {"metric", "max_latency_ratio"}:
        del out["metric"]  # a latency-only policy stays metric-free, as before
    return out if set(out) - {"metric"} or "metric" in data else None
