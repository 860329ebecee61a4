"""The dynamic-group selector language: examples, refusals with positions, and properties
(render/parse round trip, evaluation agrees with a reference, bounded input never crashes)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from update_server.groups import selector as sel
from update_server.groups.selector import All, And, Compare, Not, Or, SelectorError, Tag

BERLIN = {"tags": ["site-berlin", "canary"],
          "facts": {"gpu_sm": 87, "platform": "linux-aarch64", "tensorrt": "8.6.1",
                    "accelerators": ["gpu", "dla"], "ok": True}}


@pytest.mark.parametrize(("text", "expected"), [
    ("tag:site-berlin and gpu_sm>=87 and platform=linux-aarch64", True),
    ("tag:site-berlin and gpu_sm>87", False),
    ("gpu_sm>=87.0", True),  # numeric when both sides are numbers
    ("gpu_sm>=9", True),  # not text order ("87" < "9" as text)
    ("platform!=linux-x86_64", True),
    ("tag:site-paris or (tag:canary and not tag:lab)", True),
    ("not (tag:canary or tag:lab)", False),
    ("accelerators=dla", True),  # a list fact equals a value when one item does
    ("accelerators!=gpu", False),
    ("ok=true", True),
    ('platform="linux-aarch64"', True),
    ("missing=1", False),
    ("missing!=1", False),  # a fact the device does not report matches nothing
    ("not missing=1", True),
    ("platform>=linux", False),  # no order between texts
    ("all", True),
    ("not all", False),
])
def test_examples(text: str, expected: bool) -> None:
    assert sel.matches(text, BERLIN["tags"], BERLIN["facts"]) is expected


def test_and_binds_tighter_than_or() -> None:
    node = sel.parse("tag:a or tag:b and tag:c")
    assert node == Or((Tag("a"), And((Tag("b"), Tag("c")))))
    assert sel.matches("tag:a or tag:b and tag:c", ["a"], {})
    assert not sel.matches("(tag:a or tag:b) and tag:c", ["a"], {})


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("platform", "needs a comparison"),
    ("tag:a and", "at the end"),
    ("tag:a tag:b", "unexpected text at character 7"),
    ("(tag:a", "expected ')'"),
    ("tag:a)", "unexpected text"),
    ("gpu_sm >= ", "cannot read the selector"),
    ("tag:", "cannot read"),
    ("x" * 1001, "longer than 1000"),
    ("(" * 20 + "tag:a" + ")" * 20, "deeper than 16"),
    ("not " * 20 + "tag:a", "deeper than 16"),
    (" or ".join(f"tag:t{i}" for i in range(65)), "more than 64 terms"),
])
def test_refusals_say_what_and_where(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=re.escape(message)) as info:
        sel.parse(text)
    assert info.value.status == 400 and info.value.code == "bad_selector"


# --- properties --------------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True).filter(
    lambda s: s not in sel.KEYWORDS)
_values = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.from_regex(r"[a-z0-9.-]{1,8}", fullmatch=True),
    st.from_regex(r"[a-z =<]{0,6}", fullmatch=True),  # quoted: empty, spaced, or "=..."
)
_leaves = st.one_of(
    st.just(All()),
    _names.map(Tag),
    st.builds(Compare, _names, st.sampled_from(sel.OPERATORS), _values),
)


def _trees(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _leaves
    sub = _trees(depth - 1)
    return st.one_of(
        _leaves,
        sub.map(Not),
        st.lists(sub, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(sub, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    )


_devices = st.fixed_dictionaries({
    "tags": st.lists(_names, max_size=4),
    "facts": st.dictionaries(_names, st.one_of(st.integers(-1000, 1000), _values,
                                               st.booleans(), st.lists(_values, max_size=2)),
                             max_size=4),
})


def _reference(node: Any, tags: set[str], facts: dict[str, Any]) -> bool:
    """A second, naive evaluator written from the documentation."""
    if isinstance(node, All):
        return True
    if isinstance(node, Tag):
        return node.name in tags
    if isinstance(node, Not):
        return not _reference(node.item, tags, facts)
    if isinstance(node, And):
        return all(_reference(x, tags, facts) for x in node.items)
    if isinstance(node, Or):
        return any(_reference(x, tags, facts) for x in node.items)
    if node.key not in facts or facts[node.key] is None:
        return False
    have = facts[node.key]
    items = have if isinstance(have, list) else [have]

    def one(h: Any) -> bool:
        try:
            a, b = float(h) if not isinstance(h, bool) else None, float(node.value)
        except ValueError:
            a = b = None
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            return bool({"=": a == b, "!=": a != b, ">=": a >= b, "<=": a <= b, ">": a > b,
                         "<": a < b}[node.op])
        text = ("true" if h else "false") if isinstance(h, bool) else str(h)
        return {"=": text == node.value, "!=": text != node.value}.get(node.op, False)

    if node.op == "!=":
        return all(one(h) for h in items)
    return any(one(h) for h in items)


@settings(max_examples=300, deadline=None)
@given(_trees(3))
def test_render_then_parse_gives_the_same_tree(node: Any) -> None:
    assert sel.parse(sel.render(node)) == node


@settings(max_examples=300, deadline=None)
@given(_trees(3), _devices)
def test_evaluation_agrees_with_the_reference(node: Any, device: dict[str, Any]) -> None:
    got = sel.evaluate(node, device["tags"], device["facts"])
    assert got == _reference(node, set(device["tags"]), device["facts"])


@settings(max_examples=300, deadline=None)
@given(_trees(3), _devices)
def test_not_negates(node: Any, device: dict[str, Any]) -> None:
    assert sel.evaluate(Not(node), device["tags"], device["facts"]) is not sel.evaluate(
        node, device["tags"], device["facts"])


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("()tag:=!<> andortx01\"_-.")), max_size=80))
def test_any_input_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        node = sel.parse(text)
    except SelectorError as exc:
        assert exc.message
        return
    sel.evaluate(node, ["a"], {"x": 1})
    assert sel.parse(sel.render(node)) == node


def test_the_selector_module_is_pure() -> None:
    code = ("import json, sys\nimport update_server.groups.selector\n"
            "print(json.dumps(sorted(m for m in ('flask', 'sqlalchemy', 'requests') "
            "if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []
