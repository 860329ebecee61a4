"""C/C++ source arrays holding a model (``xxd -i`` and TFLM ``generate_cc_arrays`` styles). Pure.

``parse_c_arrays(text)`` returns every ``name[...] = { ... };`` byte array with the exact bytes
listed, the declared alignment (``alignas(N)``, ``__attribute__((aligned(N)))``, ``__ALIGNED(N)``)
and the length constant when one is declared (``name_len`` / ``name_size``), which must agree.
``declared_arena_size(text)`` reads a ``kTensorArenaSize``-style constant or ``#define`` made of
integer literals joined by ``*`` / ``+`` (no ``eval``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

MAX_ARRAYS = 64
MAX_ARENA_SIZE = 1 << 32

_COMMENT_START = re.compile(r"//|/\*")
_DECL = re.compile(r"\b([A-Za-z_]\w*)\s*\[\s*([^\]\[]{0,64})\]\s*=\s*\{")
_ALIGN = re.compile(
    r"alignas\s*\(\s*(\d+)\s*\)|aligned\s*\(\s*(\d+)\s*\)|__ALIGNED\s*\(\s*(\d+)\s*\)"
)
_INT_SUFFIX = re.compile(r"(?<=\d)(?:[uU][lL]{0,2}|[lL]{1,2}[uU]?)\b")
# The value is bounded ({1,256}): an unbounded ``[^;]+`` rescans to the end of the text for each
# ``arena_size =`` without a ``;`` (quadratic). Longer expressions are refused anyway.
_ARENA = re.compile(
    r"#\s*define\s+(\w*arena_?size\w*)[ \t]+([^\n]{1,256})"
    r"|\b(\w*arena_?size\w*)\s*=\s*([^;]{1,256});",
    re.IGNORECASE,
)
_LEN_DECL = r"\b{name}_(?:len|size|length)\s*=\s*(\d+)[uUlL]*\s*;"
_C_HINT = re.compile(rb"\[\s*\w{0,64}\s*\]\s*=\s*\{")


class CArrayError(Exception):
    """Internal: the C source is malformed. Converted to FormatError by callers."""


@dataclass(frozen=True)
class CArray:
    name: str
    data: bytes
    alignment: int | None
    element_type: str


def looks_like_c_source(prefix: bytes) -> bool:
    """Cheap test on a file prefix: text, no NUL bytes, and an array initialiser."""
    if b"\x00" in prefix:
        return False
    try:
        prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte sequence may be cut at the end of the prefix.
        if exc.start < len(prefix) - 4:
            return False
    return _C_HINT.search(prefix) is not None


def strip_comments(text: str) -> str:
    r"""Replace each ``//`` and ``/* */`` comment by a space, in one linear pass.

    (The regex ``/\*.*?\*/`` rescans to the end of the text for every unterminated ``/*``:
    quadratic, a 300 KB source took over a minute.) An unterminated ``/*`` stays as text.
    """
    out: list[str] = []
    pos = 0
    block_closes = True  # once "*/" is missing after some point, it is missing after any later
    while True:
        m = _COMMENT_START.search(text, pos)
        if m is None:
            out.append(text[pos:])
            return "".join(out)
        start = m.start()
        if m.group() == "//":
            end = text.find("\n", start)
            end = len(text) if end < 0 else end
        else:
            end = text.find("*/", start + 2) if block_closes else -1
            if end < 0:
                block_closes = False
                out.append(text[pos : start + 2])
                pos = start + 2
                continue
            end += 2
        out.append(text[pos:start])
        out.append(" ")
        pos = end


def parse_c_arrays(text: str) -> list[CArray]:
    src = strip_comments(text)
    arrays: list[CArray] = []
    pos = 0
    while True:
        m = _DECL.search(src, pos)
        if m is None:
            break
        name, dim = m.group(1), m.group(2).strip()
        end = src.find("}", m.end())
        if end < 0:
            raise CArrayError(f"array {name!r} has no closing brace")
        semi = re.match(r"\s*;", src[end + 1 : end + 64])
        if semi is None:
            raise CArrayError(f"array {name!r} is not terminated by '}};'")
        start = max(src.rfind(";", 0, m.start()), src.rfind("}", 0, m.start()))
        start = max(start, m.start() - 512)
        prefix = "\n".join(
            line for line in src[start + 1 : m.start()].splitlines()
            if not line.lstrip().startswith("#")
        )
        pos = end + 1
        etype = " ".join(prefix.split())
        if not re.search(r"\b(?:char|u?int8_t)\b", etype):
            continue  # not a byte array (e.g. an int table); ignore it
        body = src[m.end() : end]
        data = _parse_body(name, body)
        if dim:
            d = _int_literal(dim)
            if d is not None and d != len(data):
                raise CArrayError(f"array {name!r} declares {d} bytes but lists {len(data)}")
        lm = re.search(_LEN_DECL.format(name=re.escape(name)), src)
        if lm is not None and int(lm.group(1)) != len(data):
            raise CArrayError(
                f"{name}_len/_size says {lm.group(1)} bytes but the array lists {len(data)}"
            )
        align = None
        am = _ALIGN.search(prefix)
        if am is not None:
            align = int(next(g for g in am.groups() if g is not None))
            if align <= 0 or align & (align - 1) or align > 4096:
                raise CArrayError(f"array {name!r} declares an invalid alignment {align}")
        arrays.append(CArray(name=name, data=data, alignment=align, element_type=etype))
        if len(arrays) > MAX_ARRAYS:
            raise CArrayError(f"more than {MAX_ARRAYS} arrays in one source file")
    return arrays


def _parse_body(name: str, body: str) -> bytes:
    tokens = body.replace(",", " ").split()
    try:
        values = [int(_INT_SUFFIX.sub("", t), 0) if not t.startswith("-") else int(t, 0)
                  for t in tokens]
    except ValueError as exc:
        raise CArrayError(f"array {name!r} holds a value that is not an integer literal") from exc
    if any(v < -128 or v > 255 for v in values):
        raise CArrayError(f"array {name!r} holds a value outside a byte")
    return bytes(v & 0xFF for v in values)


def _int_literal(expr: str) -> int | None:
    expr = _INT_SUFFIX.sub("", expr.strip())
    try:
        return int(expr, 0)
    except ValueError:
        return None


def _eval_int_expr(expr: str) -> int | None:
    expr = _INT_SUFFIX.sub("", expr.strip())
    if len(expr) > 128:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add)):
            a, b = ev(node.left), ev(node.right)
            r = a * b if isinstance(node.op, ast.Mult) else a + b
            if r > MAX_ARENA_SIZE:
                raise ValueError("too large")
            return r
        raise ValueError("unsupported expression")

    try:
        value = ev(tree)
    except ValueError:
        return None
    return value if 0 < value <= MAX_ARENA_SIZE else None


def declared_arena_size(text: str) -> int | None:
    """The first arena-size constant whose value is a plain integer expression, else None."""
    for m in _ARENA.finditer(strip_comments(text)):
        expr = m.group(2) if m.group(2) is not None else m.group(4)
        value = _eval_int_expr(expr)
        if value is not None:
            return value
    return None
