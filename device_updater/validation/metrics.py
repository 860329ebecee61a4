"""Metrics an ML engineer would look at, each with a confidence interval (numpy).

Every function takes model outputs exactly as the model produced them (stacked over samples)
and refuses, with the reason, outputs it cannot score: nothing is reshaped or cast to fit.
Confidence intervals are 95%: Wilson for proportions, a seeded paired bootstrap otherwise (the
same resamples for the candidate and the running model, so differences are paired and a
verdict is reproducible run to run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from device_updater.validation.judge import Estimate
from device_updater.validation.runners import IoContractError

BOOTSTRAP = 300
Z95 = 1.959964


class ScoringError(IoContractError):
    """The model's output cannot be scored with the policy's metric (shape, dtype, values)."""


def wilson(k: float, n: int) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + Z95**2 / n
    c = (p + Z95**2 / (2 * n)) / d
    h = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / d
    return max(c - h, 0.0), min(c + h, 1.0)


def proportion(hits: np.ndarray) -> Estimate:
    n = int(hits.size)
    k = float(hits.sum())
    lo, hi = wilson(k, n)
    return Estimate(k / n if n else math.nan, lo, hi, n)


def resamples(n: int, b: int = BOOTSTRAP, seed: int = 20240601) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


@dataclass(frozen=True)
class Paired:
    """A metric on both models plus the bootstrap distribution of their paired difference."""

    candidate: Estimate
    running: Estimate | None
    diffs: np.ndarray | None  # running - candidate (higher-is-better metrics), per resample


def paired(fn: Callable[[np.ndarray, int], float], idx: np.ndarray, *, has_running: bool,
           lower_is_better: bool = False) -> Paired:
    """``fn(indices, model)`` with model 0 = candidate, 1 = running, on resamples of ``idx``."""
    n = idx.size
    full_c = fn(idx, 0)
    full_r = fn(idx, 1) if has_running else math.nan
    if n == 0:
        return Paired(Estimate(math.nan, math.nan, math.nan, 0), None, None)
    rs = idx[resamples(n, BOOTSTRAP if n > 1 else 1)]
    c = np.array([fn(r, 0) for r in rs])
    cand = Estimate(full_c, *_pct(c), n)
    if not has_running:
        return Paired(cand, None, None)
    r = np.array([fn(s, 1) for s in rs])
    run = Estimate(full_r, *_pct(r), n)
    return Paired(cand, run, (c - r) if lower_is_better else (r - c))


def _pct(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))


# --- classification --------------------------------------------------------------------------


def class_ids(name: str, y: np.ndarray, n: int) -> tuple[np.ndarray, int | None]:
    """Predicted class ids and the output's class count (None when it emits ids)."""
    if y.shape[:1] != (n,):
        raise ScoringError(f"output {name!r} has {y.shape[:1]} rows for {n} samples")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ScoringError(f"output {name!r} contains NaN or infinity")
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        if y.dtype.kind not in "iu":
            raise ScoringError(f"output {name!r} is one {y.dtype} per sample; a classification "
                               "metric needs class scores [N, C] or integer class ids [N]")
        return y.reshape(n).astype(np.int64), None
    if y.ndim == 2:
        if y.dtype.kind != "f":
            raise ScoringError(f"output {name!r} holds {y.dtype} scores [N, C] without a "
                               "quantization scale; the gate cannot rank them")
        return y.argmax(axis=1), int(y.shape[1])
    raise ScoringError(f"output {name!r} has shape {list(y.shape)}; a classifier output must "
                       "be [N, C] scores or [N] class ids (the gate never flattens)")


def macro_f1(pred: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> float:
    f1s = []
    for c in classes:
        tp = float(np.sum((pred == c) & (labels == c)))
        fp = float(np.sum((pred == c) & (labels != c)))
        fn = float(np.sum((pred != c) & (labels == c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(f1s)) if f1s else math.nan


# --- regression and anomaly scores -----------------------------------------------------------


def regression_values(name: str, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n = labels.shape[0]
    want = labels.shape if labels.ndim == 2 else None
    if y.dtype.kind != "f":
        raise ScoringError(f"output {name!r} is {y.dtype}; regression needs float outputs")
    if want is not None:
        if y.shape != want:
            raise ScoringError(f"output {name!r} has shape {list(y.shape)}, labels {list(want)}")
        return y.astype(np.float64)
    if y.shape not in ((n,), (n, 1)):
        raise ScoringError(f"output {name!r} has shape {list(y.shape)}; regression against "
                           f"labels [N] needs [N] or [N, 1]")
    if not np.isfinite(y).all():
        raise ScoringError(f"output {name!r} contains NaN or infinity")
    return y.reshape(n).astype(np.float64)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    pos = labels == 1
    npos, nneg = int(pos.sum()), int((~pos).sum())
    if npos == 0 or nneg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - npos * (npos + 1) / 2) / (npos * nneg))


# --- detection -------------------------------------------------------------------------------


def detections(outs: dict[str, np.ndarray], names: tuple[str, str, str],
               n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N, K, 4], scores [N, K], classes [N, K]) from the named outputs, checked."""
    missing = [x for x in names if x not in outs]
    if missing:
        raise ScoringError(f"detector outputs {missing} not found; the model has "
                           f"{sorted(outs)} (set [detection] names in the policy)")
    b, s, c = (outs[x] for x in names)
    if b.ndim != 3 or b.shape[0] != n or b.shape[2] != 4:
        raise ScoringError(f"output {names[0]!r} has shape {list(b.shape)}; boxes must be "
                           "[N, K, 4] (x1, y1, x2, y2)")
    k = b.shape[1]
    for nm, arr in ((names[1], s), (names[2], c)):
        if arr.shape != (n, k):
            raise ScoringError(f"output {nm!r} has shape {list(arr.shape)}, expected "
                               f"[N={n}, K={k}] like the boxes")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ScoringError("detector outputs contain NaN or infinity")
    return b.astype(np.float64), s.astype(np.float64), np.rint(c).astype(np.int64)


def _iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], gts[:, 0])
    y1 = np.maximum(box[1], gts[:, 1])
    x2 = np.minimum(box[2], gts[:, 2])
    y2 = np.minimum(box[3], gts[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-12))


@dataclass(frozen=True)
class Matched:
    """Detections matched to labelled boxes once (greedy by score, IoU >= 0.5, per sample and
    class, as VOC/COCO do); a resample then only re-weights samples, so mAP over hundreds of
    bootstrap resamples costs a few sorts, not a re-match each."""

    sample: np.ndarray  # per detection
    cls: np.ndarray
    score: np.ndarray
    hit: np.ndarray
    gt_counts: np.ndarray  # [N, classes]
    classes: np.ndarray  # class ids with labelled boxes


def match(det: tuple[np.ndarray, np.ndarray, np.ndarray], gt: np.ndarray, n: int) -> Matched:
    boxes, scores, classes = det
    labelled = np.unique(gt[:, 1]).astype(np.int64)
    col = {int(c): j for j, c in enumerate(labelled)}
    counts = np.zeros((n, len(labelled)), np.int64)
    rows: list[tuple[int, int, float, int]] = []
    for i in range(n):
        g_i = gt[gt[:, 0] == i]
        for c in np.unique(np.concatenate([classes[i], g_i[:, 1].astype(np.int64)])):
            g = g_i[g_i[:, 1] == c][:, 2:]
            if int(c) in col:
                counts[i, col[int(c)]] = len(g)
            sel = np.flatnonzero((classes[i] == c) & (scores[i] > 0))
            used = np.zeros(len(g), bool)
            for j in sel[np.argsort(-scores[i][sel], kind="mergesort")]:
                hit = 0
                if len(g):
                    ious = _iou(boxes[i][j], g)
                    ious[used] = -1
                    k = int(ious.argmax())
                    if ious[k] >= 0.5:
                        used[k], hit = True, 1
                rows.append((i, int(c), float(scores[i][j]), hit))
    arr = np.array(rows, np.float64).reshape(-1, 4)
    return Matched(arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2],
                   arr[:, 3], counts, labelled)


def map50(m: Matched, idx: np.ndarray) -> float:
    """mAP at IoU 0.5 (all-point interpolated AP, averaged over classes with labelled boxes)
    over the samples ``idx`` (a resample may repeat a sample: each copy counts)."""
    weight = np.bincount(idx, minlength=m.gt_counts.shape[0]).astype(np.float64)
    aps = []
    for j, c in enumerate(m.classes):
        total = float(weight @ m.gt_counts[:, j])
        if total == 0:
            continue
        sel = np.flatnonzero(m.cls == c)
        sel = sel[np.argsort(-m.score[sel], kind="mergesort")]
        w = weight[m.sample[sel]]
        tp = np.cumsum(w * m.hit[sel])
        fp = np.cumsum(w * (1 - m.hit[sel]))
        recall = tp / total
        precision = tp / np.maximum(tp + fp, 1e-12)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        aps.append(float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])))
    return float(np.mean(aps)) if aps else math.nan
