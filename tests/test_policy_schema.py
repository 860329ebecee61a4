"""The validation policy schema (edgepkg.policy): TOML file -> signed manifest -> device parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepkg.bundle import Manifest, normalize_policy
from edgepkg.cli import main
from edgepkg.errors import BundleError, UsageError
from edgepkg.policy import PolicySchemaError, parse_policy

FULL_TOML = """
metric = "top1_accuracy"
min = 0.70
max_regression = 0.02
max_latency_ratio = 1.5
max_latency_ms = 25.0
max_memory_ratio = 2.0
max_memory_bytes = 268435456
max_model_bytes = 104857600
[per_class]
min_recall = 0.3
max_recall_drop = 0.2
min_precision = 0.0
min_support = 10
[[slices]]
tag = "night"
min = 0.6
max_regression = 0.2
[io]
must_match_running = true
[statistics]
mode = "significant"
alpha = 0.05
"""


def test_every_documented_key_parses_and_round_trips() -> None:
    import tomllib

    p = parse_policy(tomllib.loads(FULL_TOML))
    assert p.per_class is not None and p.per_class.min_support == 10
    assert p.slices[0].tag == "night" and p.statistics.mode == "significant"
    assert p.max_memory_bytes == 268435456 and p.io.must_match_running
    assert parse_policy(p.to_dict()) == p


@pytest.mark.parametrize("bad,msg", [
    ({"metric": "f1"}, "unknown validation metric"),
    ({"evil": 1}, "unknown validation policy keys"),
    ({"per_class": {"min_recal": 0.3}}, "unknown keys"),
    ({"slices": [{"tag": "a"}, {"tag": "a"}]}, "twice"),
    ({"statistics": {"mode": "vibes"}}, "threshold"),
    ({"max_memory_bytes": -5}, "integer"),
    ({"max_latency_ratio": 0}, "> 0"),
    ({"io": {"must_match_running": "yes"}}, "true or false"),
])
def test_malformed_policy_is_refused_with_the_reason(bad: dict, msg: str) -> None:
    with pytest.raises(PolicySchemaError, match=msg):
        parse_policy(bad)


def test_old_four_key_policies_keep_their_manifest_form() -> None:
    assert normalize_policy({"min": "0.8", "max_latency_ratio": 1.5}) == {
        "metric": "top1_accuracy", "min": 0.8, "max_latency_ratio": 1.5}
    assert normalize_policy({"max_latency_ratio": 2}) == {"max_latency_ratio": 2.0}
    assert normalize_policy(None) is None
    with pytest.raises(UsageError, match="unknown"):
        normalize_policy({"metric": "top1_accuracy", "maximum": 1})


def _manifest(policy: object) -> dict:
    return {"name": "m", "version": "1.0.0", "format": "onnx", "plaintext_sha256": "a" * 64,
            "plaintext_length": 1, "created_at": "now", "signer": "b" * 64, "policy": policy}


def test_manifest_validates_its_policy_through_the_schema() -> None:
    Manifest.from_dict(_manifest({"metric": "custom_old_metric", "min": 0.9}))  # old: any name
    Manifest.from_dict(_manifest({"metric": "macro_f1", "per_class": {"min_recall": 0.2}}))
    with pytest.raises(BundleError, match="policy"):
        Manifest.from_dict(_manifest({"per_class": {"min_recall": "high"}}))
    m = Manifest.from_dict(_manifest({"slices": [{"tag": "night", "min": 0.5}]}))
    custom = m.tuf_custom()["policy"]
    assert custom["slices"] == [{"tag": "night", "min": "0.5"}]  # TUF canonical JSON: no floats


@pytest.fixture()
def release(tmp_path: Path) -> dict[str, Path]:
    kdir = tmp_path / "keys"
    assert main(["keys", "create", "release", "--kind", "signing", "--dir", str(kdir)]) == 0
    assert main(["keys", "create", "fleet", "--kind", "recipient", "--dir", str(kdir)]) == 0
    model = tmp_path / "m.bin"
    model.write_bytes(b"\x00" * 4096)
    return {"sign": kdir / "release.key.pem", "fleet": kdir / "fleet.pub.pem", "model": model}


def test_package_policy_file_is_signed_into_the_manifest(tmp_path, release, capsys) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text(FULL_TOML)
    out = tmp_path / "m.edgepkg"
    argv = ["package", str(release["model"]), "--name", "m", "--version", "1.0.0",
            "--format", "raw", "--sign-key", str(release["sign"]),
            "--recipient", str(release["fleet"]), "--policy", str(pol),
            "--policy-min", "0.75", "-o", str(out), "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["policy"]["min"] == 0.75  # the shorthand overrides the file
    assert manifest["policy"]["per_class"]["min_recall"] == 0.3
    assert manifest["policy"]["slices"] == [{"tag": "night", "min": 0.6, "max_regression": 0.2}]


def test_package_with_a_broken_policy_file_is_a_usage_error(tmp_path, release, capsys) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text('metric = "top1"\n')
    argv = ["package", str(release["model"]), "--name", "m", "--version", "1.0.0",
            "--format", "raw", "--sign-key", str(release["sign"]),
            "--recipient", str(release["fleet"]), "--policy", str(pol), "-o",
            str(tmp_path / "x")]
    assert main(argv) == 2
    assert "unknown validation metric" in capsys.readouterr().err
