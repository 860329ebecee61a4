"""Request generation for the API fuzzer (``fuzz.api``): operations read from the OpenAPI
document, schema-valid values drawn from each operation's JSON schema, and hostile values
injected into every string and number field (the input classes that caused the 500s of issue 13).

Generation is a small seeded walker over the JSON-schema subset the document uses (type and type
lists, properties/required/additionalProperties, items, enum, const, minimum/maximum, format
uuid/date-time) rather than hypothesis-jsonschema, whose 0.23 release no longer runs on current
hypothesis; a seeded ``random.Random`` replays the same requests from the same ``--seed``."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

HOSTILE_STRINGS: tuple[str, ...] = (
    "\ud800", "a\udfffb", "\x00", "a\x00b", "", " ", "x" * 5000, "../../etc/passwd", "%00",
    "\r\nX-Injected: 1", "/\t/evil.example", "//evil.example", "<script>alert(1)</script>",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00Z",
    "1970-01-01T00:00:00", "-1", "9223372036854775808", "NaN", "\u202e", "\ufeff", "🙂" * 100,
    "' OR 1=1 --", "${jndi:x}", "\\", "null",
)
HOSTILE_NUMBERS: tuple[Any, ...] = (
    float("nan"), float("inf"), float("-inf"), 2**63, -(2**63) - 1, 2**64, 10**400, -1, 0,
    1e308, -0.0, 2**31, True,
)
HOSTILE_QUERY: tuple[str, ...] = (
    "9223372036854775808", "-1", "1e3", "NaN", "99999999999999999999999999", "\x00", "\ud800",
    "", "0x10", " 1", "١",  # Arabic-Indic digit: str.isdigit() says yes, int() accepts it
)


def deep(n: int = 800) -> Any:
    """A JSON value nested ``n`` levels deep (lists), built without recursion."""
    v: Any = []
    for _ in range(n):
        v = [v]
    return v


RAW_BODIES: tuple[bytes, ...] = (
    b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"\xff\xfe",
    b"null", b"1" * 5000, b'"\\ud800"', b"NaN", b'{"a": 1e99999}', b"\x00" * 64,
)


def resolve(schema: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """``schema`` with every local ``$ref`` inlined (the OpenAPI schemas are not recursive)."""
    if depth > 20:
        return {}
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return resolve(components[ref.rsplit("/", 1)[1]], components, depth + 1)
        return {k: resolve(v, components, depth + 1) for k, v in schema.items()}
    if isinstance(schema, list):
        return [resolve(v, components, depth + 1) for v in schema]
    return schema


@dataclass
class Operation:
    method: str
    path: str
    security: str  # "device", "operator" or "public"
    statuses: frozenset[int]
    params: list[dict[str, Any]]
    body: Any | None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def operations(spec: dict[str, Any]) -> list[Operation]:
    """Every (path, method) of the document, with its resolved schemas."""
    comps = spec.get("components", {}).get("schemas", {})
    ops = []
    for path, methods in sorted(spec["paths"].items()):
        for method, op in sorted(methods.items()):
            sec = op.get("security") or []
            kind = ("device" if any("deviceSignature" in s for s in sec) else
                    "operator" if any("operatorToken" in s for s in sec) else "public")
            body = None
            rb = op.get("requestBody", {}).get("content", {}).get("application/json")
            if rb is not None:
                body = resolve(rb.get("schema", {}), comps)
            statuses = frozenset(int(c) for c in op.get("responses", {}) if c.isdigit())
            ops.append(Operation(method.upper(), path, kind, statuses,
                                 resolve(op.get("parameters", []), comps), body))
    return ops


_WORDS = ("det", "1.0.0", "1.1.0", "a", "cam", "enabled", "x" * 40, "model-7", "ab" * 32)


def generate(rng: random.Random, schema: Any, depth: int = 0) -> Any:
    """A value valid for ``schema`` (the subset the OpenAPI document uses), seeded by ``rng``."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kinds = schema.get("type")
    if isinstance(kinds, list):
        kinds = rng.choice(kinds)
    if kinds is None:
        kinds = "object" if "properties" in schema else rng.choice(["string", "integer", "object"])
    if kinds == "object":
        props: dict[str, Any] = schema.get("properties", {})
        out = {k: generate(rng, v, depth + 1) for k, v in props.items()
               if k in schema.get("required", ()) or rng.random() < 0.35}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for _ in range(rng.randint(0, 2)):
                out[rng.choice(_WORDS)] = generate(rng, extra, depth + 1)
        elif not props and rng.random() < 0.5:
            out[rng.choice(_WORDS)] = rng.choice([1, "v", 2.5, True, None])
        return out
    if kinds == "array":
        return [generate(rng, schema.get("items", {}), depth + 1) for _ in range(rng.randint(0, 3))]
    if kinds == "string":
        fmt = schema.get("format")
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if fmt == "date-time":
            return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
        return rng.choice(_WORDS)
    if kinds in ("integer", "number"):
        lo, hi = schema.get("minimum", -5), schema.get("maximum", 10**6)
        n = rng.randint(int(lo), int(hi))
        return n if kinds == "integer" or rng.random() < 0.5 else n + 0.5
    if kinds == "boolean":
        return rng.random() < 0.5
    return None


def inject(rng: random.Random, value: Any, rate: float) -> Any:
    """``value`` with some string/number leaves replaced by hostile ones (and, rarely, a
    subtree replaced by deep nesting)."""
    if isinstance(value, dict):
        out = {k: inject(rng, v, rate) for k, v in value.items()}
        if rng.random() < rate / 4:
            out[rng.choice(["facts", "details", "health", "x"])] = rng.choice(
                [deep(rng.choice([50, 800])), {"n": rng.choice(HOSTILE_NUMBERS)},
                 {rng.choice(HOSTILE_STRINGS): rng.choice(HOSTILE_STRINGS)}])
        return out
    if isinstance(value, list):
        return [inject(rng, v, rate) for v in value]
    if rng.random() >= rate:
        return value
    if isinstance(value, str):
        return rng.choice(HOSTILE_STRINGS)
    if isinstance(value, bool) or value is None:
        return rng.choice([*HOSTILE_NUMBERS, *HOSTILE_STRINGS])
    if isinstance(value, (int, float)):
        return rng.choice(HOSTILE_NUMBERS)
    return value


@dataclass
class Request:
    op: Operation
    auth: str
    path: str  # encoded path plus ?query
    body: bytes | None
    hostile: bool


def draw_request(rng: random.Random, ops: list[Operation], ids: dict[str, list[str]]) -> Request:
    """One request: an operation, a credential kind (mostly the one the operation takes), path
    ids (known ones or junk), query parameters and a body, hostile or schema-valid."""
    # operations that take a body carry most of the input surface: three times the weight
    op = rng.choice([o for o in ops for _ in range(3 if o.body is not None else 1)])
    auth = rng.choice([op.security] * 6 + ["device", "operator", "public"])
    hostile = rng.random() < 0.5
    path = op.path
    query: list[tuple[str, str]] = []
    for p in op.params:
        name = p["name"]
        if p.get("in") == "path":
            known = ids.get(name, [])
            if known and (not hostile or rng.random() < 0.75):
                raw = rng.choice(known)
            else:
                raw = rng.choice([*HOSTILE_STRINGS, "nope", "0" * 64])
            path = path.replace("{" + name + "}", quote(raw, safe="", errors="surrogatepass"))
        elif p.get("in") == "query" and rng.random() < 0.5:
            if hostile and rng.random() < 0.6:
                val = rng.choice(HOSTILE_QUERY + HOSTILE_STRINGS)
            else:
                v = generate(rng, p.get("schema", {}))
                val = v if isinstance(v, str) else json.dumps(v)
            query.append((name, val))
    if query:
        path += "?" + "&".join(
            f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in query)
    body: bytes | None = None
    if op.body is not None:
        if hostile and rng.random() < 0.1:
            body = rng.choice(RAW_BODIES)
        else:
            value = generate(rng, op.body)
            enroll = op.path.endswith("/enroll") and isinstance(value, dict)
            if enroll and ids.get("_token") and rng.random() < 0.5:
                value["enrollment_token"] = ids["_token"][0]
            if hostile:
                value = inject(rng, value, rate=0.5)
            body = json.dumps(value, allow_nan=True).encode()
    return Request(op, auth, path, body, hostile)
