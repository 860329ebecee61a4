"""Publishing bundles into the TUF repository, as seen by python-tuf's ngclient."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tuf.api.metadata import Metadata

from edgepkg import keys as ekeys, repo as erepo
from edgepkg.bundle import open_plaintext, write_bundle
from edgepkg.errors import RepoError
from tests.edgepkg._repo_support import make_client, role_keys, write_key, write_public

MB = 1 << 20


@dataclass
class Setup:
    repo: Path
    tmp: Path
    release_ref: str
    archive_ref: str
    fleet_ref: str

    def bundle(self, version: str, data: bytes, *, name: str = "det", signer_ref: str | None = None,
               archive: bool = True) -> Path:
        model = self.tmp / f"{name}-{version}.bin"
        model.write_bytes(data)
        out = self.tmp / f"{name}-{version}.edgepkg"
        recipients = [ekeys.load_public_key(self.fleet_ref)]
        if archive:
            recipients.append(ekeys.load_public_key(self.archive_ref))
        write_bundle(
            model,
            out,
            manifest_fields={
                "name": name,
                "version": version,
                "format": "raw",
                "requirements": {"arch": "aarch64"},
            },
            signer=ekeys.load_signer(signer_ref or self.release_ref),
            recipients=recipients,
        )
        return out


def weights(seed: int, n_bytes: int = 2 * MB) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n_bytes // 4).astype(np.float32)


def head_retrain(w: np.ndarray, seed: int) -> bytes:
    w = w.copy()
    tail = len(w) // 20
    w[-tail:] = np.random.default_rng(seed).standard_normal(tail).astype(np.float32)
    return w.tobytes()


@pytest.fixture()
def setup(tmp_path: Path) -> Setup:
    keys = role_keys(tmp_path / "keys")
    release = write_key(tmp_path / "keys" / "release.pem", "ed25519")
    archive = write_key(tmp_path / "keys" / "archive.pem", "p256")
    fleet = write_key(tmp_path / "keys" / "fleet.pem", "p256")
    fleet_pub = write_public(fleet, tmp_path / "keys" / "fleet.pub.pem")
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys, release_signer=release, archive_key=archive, recipients=[fleet_pub])
    return Setup(repo, tmp_path, release, archive, fleet)


def test_published_release_downloads_through_ngclient_with_its_summary(setup: Setup) -> None:
    bundle = setup.bundle("1.0.0", weights(1).tobytes())
    result = erepo.publish(setup.repo, [bundle])
    name = "models/det/1.0.0/det-1.0.0.edgepkg"
    assert [p.target_path for p in result.published] == [name]
    assert result.targets_version == 2
    client = make_client(setup.repo, setup.tmp / "client")
    client.refresh()
    info = client.get_targetinfo(name)
    assert info is not None
    summary = info.custom["edgepkg"]
    assert (
        summary["kind"] == "full" and summary["version"] == "1.0.0" and summary["format"] == "raw"
    )
    assert summary["requirements"] == {"arch": "aarch64"}
    assert summary["bundle_signer"] == ekeys.public_key_id(ekeys.load_public_key(setup.release_ref))
    assert summary["delta"] is None
    path = client.download_target(info)
    assert Path(path).read_bytes() == bundle.read_bytes()
    # hash-prefixed on disk
    assert (
        setup.repo / "targets/models/det/1.0.0" / f"{info.hashes['sha256']}.det-1.0.0.edgepkg"
    ).exists()


def test_list_releases_reports_current_targets(setup: Setup) -> None:
    erepo.publish(setup.repo, [setup.bundle("1.0.0", b"a" * 1000)])
    erepo.publish(setup.repo, [setup.bundle("1.0.0", b"b" * 1000, name="seg")])
    rels = erepo.list_releases(setup.repo)
    assert [(r.name, r.version, r.kind) for r in rels] == [
        ("det", "1.0.0", "full"),
        ("seg", "1.0.0", "full"),
    ]
    assert erepo.targets_version(setup.repo) == 3
    for rel in rels:
        assert erepo.target_file(setup.repo, rel).stat().st_size == rel.length


@pytest.mark.parametrize("version", ["1.0.0", "0.9.9", "1.0.0-rc.1"])
def test_publish_refuses_version_not_greater_than_published(setup: Setup, version: str) -> None:
    erepo.publish(setup.repo, [setup.bundle("1.0.0", b"x" * 5000)])
    before = erepo.targets_version(setup.repo)
    (setup.tmp / "again").mkdir()
    again = Setup(
        setup.repo, setup.tmp / "again", setup.release_ref, setup.archive_ref, setup.fleet_ref
    )
    with pytest.raises(erepo.PublishRefusedError, match="not newer"):
        erepo.publish(setup.repo, [again.bundle(version, b"y" * 5000)])
    assert erepo.targets_version(setup.repo) == before


def test_publish_refuses_bundle_from_unknown_release_key(setup: Setup) -> None:
    rogue = write_key(setup.tmp / "keys" / "rogue.pem")
    bundle = setup.bundle("1.0.0", b"z" * 5000, signer_ref=rogue)
    with pytest.raises(erepo.PublishRefusedError, match="release key"):
        erepo.publish(setup.repo, [bundle])
    assert erepo.list_releases(setup.repo) == []


def test_publish_is_all_or_nothing(setup: Setup) -> None:
    good = setup.bundle("1.0.0", b"g" * 5000)
    rogue = write_key(setup.tmp / "keys" / "rogue.pem")
    bad = setup.bundle("1.0.0", b"b" * 5000, name="seg", signer_ref=rogue)
    with pytest.raises(erepo.PublishRefusedError):
        erepo.publish(setup.repo, [good, bad])
    assert erepo.list_releases(setup.repo) == [] and erepo.targets_version(setup.repo) == 1


def test_publish_refuses_bundle_the_archive_key_cannot_open(setup: Setup) -> None:
    bundle = setup.bundle("1.0.0", b"q" * 5000, archive=False)
    with pytest.raises(erepo.PublishRefusedError, match="release-archive"):
        erepo.publish(setup.repo, [bundle])


def test_publish_refuses_a_tampered_bundle(setup: Setup) -> None:
    bundle = setup.bundle("1.0.0", b"t" * 5000)
    data = bytearray(bundle.read_bytes())
    data[60] ^= 1  # inside the signed manifest
    bundle.write_bytes(bytes(data))
    with pytest.raises(erepo.PublishRefusedError):
        erepo.publish(setup.repo, [bundle])


def test_revoked_release_disappears_and_cannot_be_published_again(setup: Setup) -> None:
    w1 = weights(1)
    erepo.publish(setup.repo, [setup.bundle("1.0.0", w1.tobytes())])
    erepo.publish(setup.repo, [setup.bundle("1.1.0", head_retrain(w1, 2))])
    result = erepo.revoke(setup.repo, "det", "1.1.0", reason="accuracy regression")
    assert "models/det/1.1.0/det-1.1.0.edgepkg" in result.removed_targets
    assert all(r.version != "1.1.0" for r in erepo.list_releases(setup.repo))
    client = make_client(setup.repo, setup.tmp / "client")
    client.refresh()
    assert client.get_targetinfo("models/det/1.1.0/det-1.1.0.edgepkg") is None
    assert client.get_targetinfo("models/det/1.0.0/det-1.0.0.edgepkg") is not None
    # recorded in the signed targets metadata
    tv = erepo.targets_version(setup.repo)
    signed = Metadata.from_file(str(setup.repo / "metadata" / f"{tv}.targets.json")).signed
    assert signed.unrecognized_fields["x-edgepkg-revoked"][0]["version"] == "1.1.0"
    (setup.tmp / "again").mkdir()
    again = Setup(
        setup.repo, setup.tmp / "again", setup.release_ref, setup.archive_ref, setup.fleet_ref
    )
    with pytest.raises(erepo.PublishRefusedError, match="revoked"):
        erepo.publish(setup.repo, [again.bundle("1.1.0", head_retrain(w1, 3))])
    erepo.publish(setup.repo, [again.bundle("1.1.1", head_retrain(w1, 3))])
    with pytest.raises(RepoError, match="already revoked"):
        erepo.revoke(setup.repo, "det", "1.1.0")
    with pytest.raises(RepoError, match="not a published"):
        erepo.revoke(setup.repo, "det", "7.0.0")


def test_status_shows_models_deltas_and_revocations(setup: Setup) -> None:
    erepo.publish(setup.repo, [setup.bundle("1.0.0", b"s" * 5000)])
    st = erepo.status(setup.repo)
    assert st["models"]["det"]["1.0.0"]["full"]["target"] == "models/det/1.0.0/det-1.0.0.edgepkg"
    assert st["roles"]["targets"]["version"] == 2
    json.dumps(st)


def test_publish_makes_delta_targets_against_last_k_releases(setup: Setup) -> None:
    from edgepkg.delta import apply_delta

    w1 = weights(1)
    v = {"1.0.0": w1.tobytes(), "1.1.0": head_retrain(w1, 2)}
    v["1.2.0"] = head_retrain(np.frombuffer(v["1.1.0"], dtype=np.float32), 3)
    v["1.3.0"] = head_retrain(np.frombuffer(v["1.2.0"], dtype=np.float32), 4)
    erepo.publish(setup.repo, [setup.bundle("1.0.0", v["1.0.0"])])
    erepo.publish(
        setup.repo, [setup.bundle("1.1.0", v["1.1.0"]), setup.bundle("1.2.0", v["1.2.0"])]
    )
    result = erepo.publish(setup.repo, [setup.bundle("1.3.0", v["1.3.0"])])  # K = 2 by default
    deltas = {p.base_version: p for p in result.published if p.kind == "delta"}
    assert set(deltas) == {"1.2.0", "1.1.0"}, result.skipped_deltas
    full = next(p for p in result.published if p.kind == "full")
    for d in deltas.values():
        assert d.length <= 0.9 * full.length
        assert d.target_path == f"models/det/1.3.0/delta-from-{d.base_version}.edgepkg"

    client = make_client(setup.repo, setup.tmp / "client")
    client.refresh()
    info = client.get_targetinfo("models/det/1.3.0/delta-from-1.1.0.edgepkg")
    assert info is not None
    summary = info.custom["edgepkg"]
    assert summary["kind"] == "delta" and summary["version"] == "1.3.0"
    import hashlib

    assert summary["sha256"] == hashlib.sha256(v["1.3.0"]).hexdigest()
    assert summary["length"] == len(v["1.3.0"])
    assert summary["delta"]["base_version"] == "1.1.0"
    assert summary["delta"]["base_sha256"] == hashlib.sha256(v["1.1.0"]).hexdigest()
    assert summary["delta"]["method"] in ("tensor", "zstd-window", "bsdiff")
    assert summary["bundle_signer"] == ekeys.public_key_id(ekeys.load_public_key(setup.release_ref))

    # A device with the fleet key rebuilds 1.3.0 from 1.1.0 and the delta.
    delta_bundle = client.download_target(info)
    release_pub = ekeys.load_public_key(setup.release_ref)
    patch = setup.tmp / "patch.bin"
    patch.write_bytes(
        b"".join(
            open_plaintext(
                delta_bundle,
                keys=[ekeys.load_recipient_key(setup.fleet_ref)],
                trusted_keys=[release_pub],
            )
        )
    )
    old = setup.tmp / "old.bin"
    old.write_bytes(v["1.1.0"])
    out = setup.tmp / "rebuilt.bin"
    apply_delta(
        old, patch, out, expected_sha256=summary["sha256"], expected_length=summary["length"]
    )
    assert out.read_bytes() == v["1.3.0"]
    kinds = sorted(
        (r.version, r.kind, r.base_version or "") for r in erepo.list_releases(setup.repo)
    )
    assert ("1.3.0", "delta", "1.1.0") in kinds and ("1.3.0", "delta", "1.2.0") in kinds
    assert ("1.3.0", "delta", "1.0.0") not in kinds


def test_delta_not_published_when_not_smaller_than_margin(setup: Setup) -> None:
    erepo.publish(setup.repo, [setup.bundle("1.0.0", weights(1, MB).tobytes())])
    result = erepo.publish(setup.repo, [setup.bundle("2.0.0", weights(99, MB).tobytes())])
    assert [p.kind for p in result.published] == ["full"]
    assert any("not below 0.9" in s for s in result.skipped_deltas)


def test_deltas_can_be_disabled_per_publish(setup: Setup) -> None:
    w1 = weights(1, MB)
    erepo.publish(setup.repo, [setup.bundle("1.0.0", w1.tobytes())])
    result = erepo.publish(setup.repo, [setup.bundle("1.0.1", head_retrain(w1, 5))], deltas=0)
    assert [p.kind for p in result.published] == ["full"]


def test_revoking_a_base_removes_deltas_from_it(setup: Setup) -> None:
    w1 = weights(1, MB)
    erepo.publish(setup.repo, [setup.bundle("1.0.0", w1.tobytes())])
    erepo.publish(setup.repo, [setup.bundle("1.1.0", head_retrain(w1, 6))])
    assert any(r.kind == "delta" for r in erepo.list_releases(setup.repo))
    res = erepo.revoke(setup.repo, "det", "1.0.0")
    assert "models/det/1.1.0/delta-from-1.0.0.edgepkg" in res.removed_targets
    assert [(r.version, r.kind) for r in erepo.list_releases(setup.repo)] == [("1.1.0", "full")]
