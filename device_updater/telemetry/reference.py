"""The reference profile of a model version: what its inputs and outputs looked like on the
device's holdout set, recorded at install time right after validation passes.

Input part (from the holdout inputs): per feature, 9 bin edges at the holdout's deciles
(10 bins, fewer when a feature takes few values), the holdout's counts on those bins, mean and
standard deviation. The field histograms use the same edges, so drift is a comparison of two
histograms on identical bins (see :mod:`.drift`).

Output part (class distribution, top-1 confidence moments): the validation gate does not hand
its outputs to the daemon through its public API, so this part is taken from the first field
interval with at least :data:`~.drift.MIN_SAMPLES` predictions (``output_source = "field"``);
``prediction_shift`` and ``confidence_drop`` then measure change since the first interval after
install. When a caller has the holdout outputs it passes them and the source is ``"holdout"``.

Features: when an input sample has at most 32 values, each value is a feature (``f0``...);
otherwise (images, audio) the features are the per-sample summary ``mean, std, min, max, p10,
p50, p90`` of the flattened sample, the same one the app computes with
:func:`device_updater.telemetry.client.summarise`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_updater._fsutil import atomic_write_json, read_limited
from edgepkg.protocol import Moments
from edgepkg.protocol._telemetry import MAX_CLASSES, MAX_FEATURES

SUMMARY_FEATURES = ("mean", "std", "min", "max", "p10", "p50", "p90")
BINS = 10
MAX_PROFILE_BYTES = 256 * 1024
KEEP_PROFILES = 3  # versions kept per model (the running one, the previous one, a spare)


def _sig(x: float) -> float:
    """6 significant digits: edges travel in every report, so they should be short."""
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class FeatureRef:
    name: str
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean: float
    std: float


@dataclass(frozen=True)
class ReferenceProfile:
    model: str
    version: str
    n: int
    features: tuple[FeatureRef, ...] = ()
    summarised: bool = False  # features are SUMMARY_FEATURES of each sample, not raw values
    class_counts: tuple[int, ...] = ()
    confidence: Moments | None = None
    output_source: str | None = None  # "holdout" | "field" | None (not yet known)

    @property
    def has_outputs(self) -> bool:
        return self.output_source is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "n": self.n,
            "summarised": self.summarised,
            "features": [{"name": f.name, "edges": list(f.edges), "counts": list(f.counts),
                          "mean": f.mean, "std": f.std} for f in self.features],
            "class_counts": list(self.class_counts),
            "confidence": self.confidence.to_json() if self.confidence else None,
            "output_source": self.output_source,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ReferenceProfile:
        conf = obj.get("confidence")
        return cls(
            model=str(obj["model"]), version=str(obj["version"]), n=int(obj["n"]),
            summarised=bool(obj.get("summarised", False)),
            features=tuple(FeatureRef(str(f["name"]), tuple(map(float, f["edges"])),
                                      tuple(map(int, f["counts"])), float(f["mean"]),
                                      float(f["std"])) for f in obj.get("features", [])),
            class_counts=tuple(map(int, obj.get("class_counts", []))),
            confidence=Moments(**conf) if conf else None,
            output_source=obj.get("output_source"))

    def with_outputs(self, class_counts: Sequence[int], confidence: Moments | None,
                     source: str) -> ReferenceProfile:
        return replace(self, class_counts=tuple(class_counts), confidence=confidence,
                       output_source=source)


def summarise_rows(x: np.ndarray) -> np.ndarray:
    """Per-sample ``SUMMARY_FEATURES`` of ``[N, D]`` (matches ``client.summarise``)."""
    q = np.quantile(x, [0.1, 0.5, 0.9], axis=1, method="inverted_cdf")
    return np.stack([x.mean(axis=1), x.std(axis=1), x.min(axis=1), x.max(axis=1),
                     q[0], q[1], q[2]], axis=1)


def feature_matrix(inputs: np.ndarray) -> tuple[np.ndarray, list[str], bool]:
    """The ``[N, F]`` feature matrix of holdout inputs, its names, and whether summarised."""
    x = np.asarray(inputs, dtype=np.float64).reshape(inputs.shape[0], -1)
    if x.shape[1] <= MAX_FEATURES:
        return x, [f"f{i}" for i in range(x.shape[1])], False
    return summarise_rows(x), list(SUMMARY_FEATURES), True


def bin_edges(values: np.ndarray, bins: int = BINS) -> tuple[float, ...]:
    """Upper edges at the deciles (``bins - 1`` edges), duplicates removed: at least one."""
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    out: list[float] = []
    for q in qs:
        e = _sig(float(q))
        if not out or e > out[-1]:
            out.append(e)
    return tuple(out) if out else (_sig(float(values[0])),)


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> tuple[int, ...]:
    """Counts with the protocol's convention: bucket i holds edges[i-1] < v <= edges[i]."""
    idx = np.searchsorted(np.asarray(edges), values, side="left")
    return tuple(int(c) for c in np.bincount(idx, minlength=len(edges) + 1))


def output_summary(outputs: np.ndarray) -> tuple[tuple[int, ...], Moments]:
    """Class counts and top-1 confidence moments of ``[N, C]`` probabilities/scores."""
    out = np.asarray(outputs, dtype=np.float64).reshape(outputs.shape[0], -1)
    if out.shape[1] > 1:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        probs = out if np.allclose(out.sum(axis=1), 1, atol=1e-3) and out.min() >= 0 \
            else e / e.sum(axis=1, keepdims=True)
    else:
        probs = out
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    counts = np.bincount(pred, minlength=min(out.shape[1], MAX_CLASSES))[:MAX_CLASSES]
    return tuple(int(c) for c in counts), Moments(
        count=int(conf.size), mean=float(conf.mean()), std=float(conf.std()),
        min=float(conf.min()), max=float(conf.max()))


def build_profile(model: str, version: str, inputs: np.ndarray,
                  outputs: np.ndarray | None = None) -> ReferenceProfile:
    x, names, summarised = feature_matrix(inputs)
    feats = []
    for i, name in enumerate(names):
        col = x[:, i]
        edges = bin_edges(col)
        feats.append(FeatureRef(name, edges, bin_counts(col, edges), _sig(float(col.mean())),
                                _sig(float(col.std()))))
    profile = ReferenceProfile(model=model, version=version, n=int(x.shape[0]),
                               features=tuple(feats), summarised=summarised)
    if outputs is not None:
        counts, conf = output_summary(outputs)
        profile = profile.with_outputs(counts, conf, "holdout")
    return profile


# -- persistence: models/<model>/telemetry/reference-<version>.json -----------------------------
def profile_path(model_dir: Path, version: str) -> Path:
    return model_dir / "telemetry" / f"reference-{version}.json"


def save_profile(model_dir: Path, profile: ReferenceProfile) -> Path:
    path = profile_path(model_dir, profile.version)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(path, profile.to_json())
    old = sorted(path.parent.glob("reference-*.json"), key=lambda p: p.stat().st_mtime)
    for stale in old[:-KEEP_PROFILES]:
        with contextlib.suppress(OSError):
            stale.unlink()
    return path


def load_profile(model_dir: Path, version: str) -> ReferenceProfile | None:
    """The profile of ``version``, or None when none was recorded (or it is unreadable)."""
    try:
        raw = read_limited(profile_path(model_dir, version), MAX_PROFILE_BYTES)
        return ReferenceProfile.from_json(json.loads(raw))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class ProfileCache:
    """Profiles by (model, version), read from disk once; a saved update replaces the entry."""

    models_dir: Path
    _cache: dict[tuple[str, str], ReferenceProfile | None] = field(default_factory=dict)

    def get(self, model: str, version: str) -> ReferenceProfile | None:
        key = (model, version)
        if key not in self._cache:
            self._cache[key] = load_profile(self.models_dir / model, version)
        return self._cache[key]

    def put(self, profile: ReferenceProfile) -> None:
        save_profile(self.models_dir / profile.model, profile)
        self._cache[(profile.model, profile.version)] = profile


def record_from_holdout(model_dir: Path, model: str, version: str, holdout_dir: Path,
                        task: str = "classification",
                        outputs: np.ndarray | None = None) -> ReferenceProfile:
    """Load the holdout (through the validation package's public loader) and save the profile.
    Raises the loader's :class:`~device_updater.errors.HoldoutError` on a bad holdout."""
    from device_updater.validation import load_holdout

    holdout = load_holdout(holdout_dir, task=task)
    profile = build_profile(model, version, holdout.inputs, outputs)
    save_profile(model_dir, profile)
    return profile


def record_after_validation(holdout_dir: Path | None, model_dir: Path, model: str,
                            version: str, policy: Any) -> ReferenceProfile | None:
    """The install step's one call (after the holdout gate accepted ``version``): record the
    profile from the holdout; never fails the update (a missing profile only means no drift
    scores). Without a holdout there is nothing to profile."""
    if holdout_dir is None:
        return None
    import logging

    from device_updater.errors import Error

    task = "classification"
    with contextlib.suppress(Exception):
        from device_updater.validation import parse_device_policy

        task = parse_device_policy(policy).task
    try:
        return record_from_holdout(model_dir, model, version, holdout_dir, task=task)
    except (Error, OSError, ValueError) as exc:
        logging.getLogger("edge_updater").warning(
            "no reference profile recorded: drift will not be scored",
            extra={"model": model, "version": version, "error": str(exc)})
        return None
