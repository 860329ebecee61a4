"""The I/O contract: does the candidate take and give what the running model does? (pure)

A signature is what the runner reports: ``{"inputs": [spec], "outputs": [spec]}`` with
``spec = {"name", "dtype", "shape" (-1 = dynamic), "quantization": [scale, zp] | None}``.
A quantized int8/uint8 tensor counts as the float32 it stands for (the runner quantizes and
dequantizes with the model's own parameters), so an int8 build of the same model keeps the
contract; any other dtype change breaks it, as do other names, ranks, fixed dims or class count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Signature = Mapping[str, Sequence[Mapping[str, Any]]]


def logical_dtype(spec: Mapping[str, Any]) -> str:
    return "float32" if spec.get("quantization") else str(spec.get("dtype"))


def _dims_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b,
                                                                              strict=True))


def compare(candidate: Signature, running: Signature, *,
            scored_outputs: Sequence[str] = ()) -> list[str]:
    """Every difference, as a sentence; ``[]`` when the contract holds.

    ``scored_outputs``: outputs the metric reads; their last dim is the class count and is
    named as such when it differs.
    """
    problems: list[str] = []
    for side in ("inputs", "outputs"):
        cand = {str(s["name"]): s for s in candidate.get(side, ())}
        run = {str(s["name"]): s for s in running.get(side, ())}
        if list(cand) != list(run):
            missing = [n for n in run if n not in cand]
            extra = [n for n in cand if n not in run]
            if missing or extra:
                problems.append(f"{side} differ: the running model has {list(run)}, the "
                                f"candidate {list(cand)}")
                continue
            problems.append(f"{side} are in another order: {list(run)} -> {list(cand)}")
        for name, r in run.items():
            c = cand[name]
            if logical_dtype(c) != logical_dtype(r):
                problems.append(f"{side[:-1]} {name!r} dtype changed: {logical_dtype(r)} -> "
                                f"{logical_dtype(c)}")
            cs, rs = list(c.get("shape", ())), list(r.get("shape", ()))
            if not _dims_compatible(cs, rs):
                if (side == "outputs" and name in scored_outputs and len(cs) == len(rs)
                        and _dims_compatible(cs[:-1], rs[:-1])):
                    problems.append(f"output {name!r} class count changed: {rs[-1]} -> "
                                    f"{cs[-1]}")
                else:
                    problems.append(f"{side[:-1]} {name!r} shape changed: {rs} -> {cs} "
                                    "(-1 = dynamic)")
    return problems
