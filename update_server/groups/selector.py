"""The dynamic-group selector language (pure: no I/O, no Flask, no SQL).

A selector picks devices by their tags and facts::

    tag:site-berlin and gpu_sm>=87 and platform=linux-aarch64
    (tag:canary or tag:lab) and not status=broken
    all

- ``tag:NAME`` is true when the device carries the tag;
- ``KEY OP VALUE`` compares the device fact ``KEY`` with ``=``, ``!=``, ``>=``, ``<=``, ``>``,
  ``<``: numerically when both sides parse as finite numbers, else as text (only ``=`` and
  ``!=`` have a meaning for text; an ordering of text is false). ``VALUE`` may be quoted
  (``"a b"``; quotes are needed when it has spaces or starts with ``=<>!``). A list fact
  (e.g. ``accelerators``) is equal to a value when one item is. A
  fact the device does not report makes every comparison false, ``!=`` included, so
  ``not platform=x`` is the way to include devices that say nothing;
- ``and`` binds tighter than ``or``; ``not`` and parentheses as usual; ``all`` matches every
  device.

Selectors come from operators over HTTP, so the parser is bounded: at most
:data:`MAX_LENGTH` characters, :data:`MAX_TERMS` terms and :data:`MAX_DEPTH` levels of
nesting; every refusal is a :class:`SelectorError` saying where and why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from update_server.errors import BadRequestError

MAX_LENGTH = 1000
MAX_TERMS = 64
MAX_DEPTH = 16
OPERATORS = ("=", "!=", ">=", "<=", ">", "<")
KEYWORDS = frozenset({"and", "or", "not", "all"})

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<lp>\() | (?P<rp>\)) |
      tag:(?P<tag>[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,99}) |
      (?P<key>[A-Za-z_][A-Za-z0-9_.-]{0,99})\s*
        (?:(?P<op>!=|>=|<=|=|>|<)\s*(?:"(?P<qval>[^"\\]{0,200})"|(?P<val>[^\s()"=<>!][^\s()"]{0,199})))?
    )""",
    re.VERBOSE,
)
_BARE_VALUE = re.compile(r'^[^\s()"=<>!][^\s()"]{0,199}$')


class SelectorError(BadRequestError):
    """A selector that does not parse (400 ``bad_selector``); the message says where."""

    code = "bad_selector"


@dataclass(frozen=True)
class All:
    pass


@dataclass(frozen=True)
class Tag:
    name: str


@dataclass(frozen=True)
class Compare:
    key: str
    op: str
    value: str


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Union[All, Tag, Compare, Not, And, Or]  # noqa: UP007 - a runtime alias of classes


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(f"cannot read the selector at character {pos + 1}: "
                                f"{text[pos:pos + 20].strip()!r}", field="selector")
        at = m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
        if m.group("lp"):
            out.append(("(", None, at))
        elif m.group("rp"):
            out.append((")", None, at))
        elif m.group("tag") is not None:
            out.append(("tag", m.group("tag"), at))
        elif m.group("op"):
            value = m.group("qval") if m.group("qval") is not None else m.group("val")
            out.append(("cmp", (m.group("key"), m.group("op"), value), at))
        else:
            word = m.group("key")
            kind = word if word in KEYWORDS else "word"
            out.append((kind, word, at))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any, int]]) -> None:
        self.tokens = tokens
        self.i = 0
        self.terms = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def fail(self, what: str) -> SelectorError:
        if self.i < len(self.tokens):
            where = f"at character {self.tokens[self.i][2] + 1}"
        else:
            where = "at the end"
        return SelectorError(f"{what} {where}", field="selector")

    def expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.fail(f"the selector nests deeper than {MAX_DEPTH} levels")
        items = [self.conj(depth)]
        while self.peek() == "or":
            self.i += 1
            items.append(self.conj(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(self, depth: int) -> Node:
        items = [self.unary(depth)]
        while self.peek() == "and":
            self.i += 1
            items.append(self.unary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self, depth: int) -> Node:
        kind = self.peek()
        if kind == "not":
            self.i += 1
            if depth + 1 > MAX_DEPTH:
                raise self.fail(f"the selector nests deeper than {MAX_DEPTH} levels")
            return Not(self.unary(depth + 1))
        if kind == "(":
            self.i += 1
            node = self.expr(depth + 1)
            if self.peek() != ")":
                raise self.fail("expected ')'")
            self.i += 1
            return node
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.fail(f"the selector has more than {MAX_TERMS} terms")
        leaf: Node
        if kind == "tag":
            leaf = Tag(self.tokens[self.i][1])
        elif kind == "cmp":
            key, op, value = self.tokens[self.i][1]
            leaf = Compare(key, op, value)
        elif kind == "all":
            leaf = All()
        elif kind == "word":
            raise self.fail(
                f"{self.tokens[self.i][1]!r} needs a comparison (e.g. platform=linux-aarch64) "
                "or the tag: prefix"
            )
        else:
            raise self.fail("expected tag:NAME, KEY=VALUE, 'all', 'not' or '('")
        self.i += 1
        return leaf


def parse(text: str) -> Node:
    """Parse a selector; raise :class:`SelectorError` with the position of the fault."""
    if not isinstance(text, str):
        raise SelectorError("the selector must be a string", field="selector")
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"the selector is longer than {MAX_LENGTH} characters",
                            field="selector")
    if not text.strip():
        raise SelectorError("the selector is empty (use 'all' for every device)",
                            field="selector")
    p = _Parser(_tokens(text))
    node = p.expr(0)
    if p.i != len(p.tokens):
        raise p.fail("unexpected text")
    return node


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _compare_one(have: Any, op: str, want: str) -> bool:
    a, b = _number(have), _number(want)
    if a is not None and b is not None:
        return {
            "=": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b,
        }[op]
    if op == "=":
        return _text(have) == want
    if op == "!=":
        return _text(have) != want
    return False  # no order between texts: "gpu_sm>=87" on "n/a" is false, not a surprise


def _compare(facts: Mapping[str, Any], node: Compare) -> bool:
    if node.key not in facts or facts[node.key] is None:
        return False
    have = facts[node.key]
    if isinstance(have, list | tuple):
        if node.op == "!=":
            return all(_compare_one(x, "!=", node.value) for x in have)
        return any(_compare_one(x, node.op, node.value) for x in have)
    if isinstance(have, dict):
        return False
    return _compare_one(have, node.op, node.value)


def evaluate(node: Node, tags: Iterable[str], facts: Mapping[str, Any]) -> bool:
    """Does a device with these tags and facts match? (Depth is bounded by :func:`parse`.)"""
    tagset = tags if isinstance(tags, set | frozenset) else set(tags)
    return _eval(node, tagset, facts)


def _eval(node: Node, tags: set[str] | frozenset[str], facts: Mapping[str, Any]) -> bool:
    if isinstance(node, All):
        return True
    if isinstance(node, Tag):
        return node.name in tags
    if isinstance(node, Compare):
        return _compare(facts, node)
    if isinstance(node, Not):
        return not _eval(node.item, tags, facts)
    if isinstance(node, And):
        return all(_eval(x, tags, facts) for x in node.items)
    return any(_eval(x, tags, facts) for x in node.items)


def render(node: Node) -> str:
    """The canonical text of a parsed selector (``parse(render(n)) == n``)."""
    if isinstance(node, All):
        return "all"
    if isinstance(node, Tag):
        return f"tag:{node.name}"
    if isinstance(node, Compare):
        value = node.value if _BARE_VALUE.match(node.value) else f'"{node.value}"'
        return f"{node.key}{node.op}{value}"
    if isinstance(node, Not):
        inner = render(node.item)
        return f"not ({inner})" if isinstance(node.item, And | Or) else f"not {inner}"
    if isinstance(node, And):
        return " and ".join(f"({render(x)})" if isinstance(x, Or | And) else render(x)
                            for x in node.items)
    return " or ".join(f"({render(x)})" if isinstance(x, Or) else render(x) for x in node.items)


def matches(text: str, tags: Iterable[str], facts: Mapping[str, Any]) -> bool:
    """Parse and evaluate in one step (for callers holding the stored text)."""
    return evaluate(parse(text), tags, facts)
