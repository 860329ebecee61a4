"""TUF core of the release repository, checked by python-tuf's own client (ngclient)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata

from edgepkg import repo as erepo
from edgepkg.errors import RepoError, UsageError
from tests.edgepkg._repo_support import make_client, role_keys, write_key


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, list[str]]:
    return role_keys(tmp_path / "keys")


@pytest.fixture()
def repo(tmp_path: Path, keys) -> Path:
    path = tmp_path / "repo"
    erepo.init_repo(path, keys)
    return path


def test_init_produces_a_repository_ngclient_accepts(repo: Path, tmp_path: Path) -> None:
    client = make_client(repo, tmp_path / "client")
    client.refresh()
    assert client.get_targetinfo("models/none/1.0.0/none-1.0.0.edgepkg") is None
    root = Metadata.from_file(str(repo / "metadata" / "1.root.json")).signed
    assert root.consistent_snapshot is True
    assert (repo / "metadata" / "1.targets.json").exists()
    assert (repo / "metadata" / "1.snapshot.json").exists()
    now = datetime.now(UTC)
    assert timedelta(days=364) < root.expires - now <= timedelta(days=365)


def test_init_uses_the_project_key_ids(repo: Path) -> None:
    from edgepkg.repo import _keys

    config = erepo.load_config(repo)
    ref = config.role("targets").keys[0]
    assert ref.keyid == _keys.key_id(_keys.public_key_from_ref(ref.ref))


def test_init_refuses_to_overwrite_an_existing_repository(repo: Path, keys) -> None:
    with pytest.raises(RepoError, match="already holds"):
        erepo.init_repo(repo, keys)


def test_init_refuses_a_threshold_larger_than_the_keys(tmp_path: Path, keys) -> None:
    with pytest.raises(UsageError, match="threshold"):
        erepo.init_repo(tmp_path / "r", keys, thresholds={"root": 2})


def test_init_refuses_a_missing_role_key(tmp_path: Path, keys) -> None:
    del keys["snapshot"]
    with pytest.raises(UsageError, match="snapshot"):
        erepo.init_repo(tmp_path / "r", keys)


def test_refresh_is_idempotent_and_resigns_only_when_due(repo: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    assert erepo.refresh(repo, now=now).resigned == []
    later = now + timedelta(hours=13)  # timestamp (1 d) has < half of its life left
    first = erepo.refresh(repo, now=later)
    assert first.resigned == ["timestamp"]
    assert erepo.refresh(repo, now=later).resigned == []
    forced = erepo.refresh(repo, now=later, force=True)
    assert forced.resigned == ["snapshot", "timestamp"]
    client = make_client(repo, tmp_path / "client")
    client.refresh()
    assert client._trusted_set.timestamp.version == 3
    assert client._trusted_set.snapshot.version == 2


def test_client_refuses_expired_timestamp_until_refresh(tmp_path: Path, keys) -> None:
    repo = tmp_path / "repo"
    past = datetime.now(UTC) - timedelta(days=3)
    erepo.init_repo(repo, keys, now=past)  # timestamp (1 d) and snapshot (7 d... no: 4 d left)
    with pytest.raises(tuf_exc.ExpiredMetadataError):
        make_client(repo, tmp_path / "c1").refresh()
    result = erepo.refresh(repo)
    assert "timestamp" in result.resigned
    make_client(repo, tmp_path / "c2").refresh()


def test_refresh_reports_expired_offline_role_for_monitoring(tmp_path: Path, keys) -> None:
    repo = tmp_path / "repo"
    erepo.init_repo(
        repo, keys, expires={"targets": "2d"}, now=datetime.now(UTC) - timedelta(days=3)
    )
    result = erepo.refresh(repo)
    assert result.exit_code == erepo.REFRESH_CRITICAL
    assert any("targets" in e for e in result.expired)
    erepo.init_repo(tmp_path / "r2", keys, expires={"targets": "2d"})
    soon = datetime.now(UTC) + timedelta(hours=40)  # targets: 8 h left of 2 d
    assert erepo.refresh(tmp_path / "r2", now=soon).exit_code == erepo.REFRESH_WARNING


def test_refresh_refuses_when_signing_threshold_cannot_be_met(tmp_path: Path) -> None:
    keys = role_keys(tmp_path / "keys")
    keys["timestamp"].append(write_key(tmp_path / "keys" / "timestamp2.pem"))
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys, thresholds={"timestamp": 2})
    Path(keys["timestamp"][1]).unlink()
    before = (repo / "metadata" / "timestamp.json").read_bytes()
    with pytest.raises(RepoError, match="threshold"):
        erepo.refresh(repo, force=True)
    assert (repo / "metadata" / "timestamp.json").read_bytes() == before  # nothing lost


def test_client_refuses_metadata_below_threshold(tmp_path: Path) -> None:
    keys = role_keys(tmp_path / "keys")
    keys["timestamp"].append(write_key(tmp_path / "keys" / "timestamp2.pem"))
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys, thresholds={"timestamp": 2})
    make_client(repo, tmp_path / "ok").refresh()
    ts_path = repo / "metadata" / "timestamp.json"
    md = Metadata.from_bytes(ts_path.read_bytes())
    md.signatures.pop(next(iter(md.signatures)))  # one of two required signatures
    ts_path.write_bytes(md.to_bytes())
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        make_client(repo, tmp_path / "bad").refresh()


def test_root_rotation_chain_followed_by_client_on_v1(tmp_path: Path, keys) -> None:
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys)
    old_root_keyid = erepo.load_config(repo).role("root").keys[0].keyid
    new1 = write_key(tmp_path / "keys" / "root-b.pem")
    new2 = write_key(tmp_path / "keys" / "root-c.pem")
    r2 = erepo.rotate(repo, "root", add=[new1])
    assert r2.root_version == 2 and len(r2.keyids) == 2
    r3 = erepo.rotate(repo, "root", add=[new2], remove=[old_root_keyid], threshold=2)
    assert r3.root_version == 3 and old_root_keyid not in r3.keyids
    client = make_client(repo, tmp_path / "client", root_version=1)
    client.refresh()
    assert client._trusted_set.root.version == 3
    assert old_root_keyid not in [k.keyid for k in erepo.load_config(repo).role("root").keys]


def test_client_refuses_root_signed_only_by_removed_key(tmp_path: Path, keys) -> None:
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys)
    old_ref = erepo.load_config(repo).role("root").keys[0]
    new = write_key(tmp_path / "keys" / "root-b.pem")
    erepo.rotate(repo, "root", add=[new], remove=[old_ref.keyid])
    # An attacker holding the removed key forges root v3.
    from edgepkg.repo import _keys

    forged = Metadata.from_bytes((repo / "metadata" / "2.root.json").read_bytes())
    forged.signed.version = 3
    forged.sign(_keys.load_tuf_signer(old_ref.ref).signer)
    (repo / "metadata" / "3.root.json").write_bytes(forged.to_bytes())
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        make_client(repo, tmp_path / "client", root_version=1).refresh()


def test_client_refuses_timestamp_signed_by_removed_key(tmp_path: Path, keys) -> None:
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys)
    old = erepo.load_config(repo).role("timestamp").keys[0]
    new = write_key(tmp_path / "keys" / "timestamp-b.pem")
    result = erepo.rotate(repo, "timestamp", add=[new], remove=[old.keyid])
    assert result.keyids != [old.keyid]
    client = make_client(repo, tmp_path / "client")
    client.refresh()
    from edgepkg.repo import _keys

    ts_path = repo / "metadata" / "timestamp.json"
    forged = Metadata.from_bytes(ts_path.read_bytes())
    forged.signed.version += 1
    forged.sign(_keys.load_tuf_signer(old.ref).signer)
    ts_path.write_bytes(forged.to_bytes())
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        make_client(repo, tmp_path / "client2").refresh()


def test_rotate_refuses_removing_below_threshold(repo: Path) -> None:
    keyid = erepo.load_config(repo).role("snapshot").keys[0].keyid
    with pytest.raises(UsageError, match="threshold"):
        erepo.rotate(repo, "snapshot", remove=[keyid])


def test_status_lists_roles_and_warnings(repo: Path) -> None:
    st = erepo.status(repo, now=datetime.now(UTC) + timedelta(hours=20))
    assert st["roles"]["timestamp"]["warning"] is True
    assert st["roles"]["root"]["warning"] is False
    assert any("timestamp" in w for w in st["warnings"])
    json.dumps(st)


def test_targets_version_and_empty_release_list(repo: Path) -> None:
    assert erepo.targets_version(repo) == 1
    assert erepo.list_releases(repo) == []


def test_read_api_on_a_missing_repository_raises_repo_error(tmp_path: Path) -> None:
    with pytest.raises(RepoError):
        erepo.list_releases(tmp_path / "nope")
    with pytest.raises(RepoError):
        erepo.targets_version(tmp_path / "nope")
    with pytest.raises(RepoError):
        erepo.refresh(tmp_path / "nope")


def test_list_releases_refuses_tampered_targets_metadata(repo: Path) -> None:
    path = repo / "metadata" / "1.targets.json"
    md = Metadata.from_bytes(path.read_bytes())
    md.signed.unrecognized_fields["x-injected"] = True
    path.write_bytes(md.to_bytes())
    with pytest.raises(RepoError, match="not validly signed"):
        erepo.list_releases(repo)


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_rotating_an_online_or_targets_key_keeps_clients_working(
    tmp_path: Path, keys, role: str
) -> None:
    repo = tmp_path / "repo"
    erepo.init_repo(repo, keys)
    make_client(repo, tmp_path / "before").refresh()
    old = erepo.load_config(repo).role(role).keys[0].keyid
    new = write_key(tmp_path / "keys" / f"{role}-b.pem")
    erepo.rotate(repo, role, add=[new], remove=[old])
    Path(keys[role][0]).unlink()  # the removed key is gone; the repository keeps working
    erepo.refresh(repo, force=True)
    client = make_client(repo, tmp_path / "after")
    client.refresh()
    assert old not in client._trusted_set.root.roles[role].keyids
