"""Fleet-aware deltas: bases chosen from the versions devices run, and deltas made later."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from edgepkg import keys as ekeys, repo as erepo
from edgepkg.bundle import open_plaintext, write_bundle
from edgepkg.cli import main as cli_main
from edgepkg.errors import RepoError, UsageError
from tests.edgepkg._repo_support import make_client, role_keys, write_key, write_public

KB = 1 << 10
MODEL = "det"


# --- the pure rule --------------------------------------------------------------------------


def test_bases_are_the_most_run_versions_then_the_last_k() -> None:
    published = ["1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0"]
    fleet = {"1.0.0": 412, "3.0.0": 100, "4.0.0": 37, "2.0.0": 5, "5.0.0": 1}
    assert erepo.choose_delta_bases(
        "7.0.0", published, last_k=0, fleet=fleet, max_bases=2
    ) == ["1.0.0", "3.0.0"]
    # last K is kept on top of the fleet's choice (a release devices are only now moving to)
    assert erepo.choose_delta_bases(
        "7.0.0", published, last_k=2, fleet=fleet, max_bases=4
    ) == ["1.0.0", "3.0.0", "4.0.0", "2.0.0", "6.0.0", "5.0.0"]
    # without a fleet: today's rule, the last K releases
    assert erepo.choose_delta_bases("7.0.0", published, last_k=2) == ["6.0.0", "5.0.0"]


def test_unpublished_higher_and_revoked_versions_are_never_bases() -> None:
    # 2.0.0 was revoked, so it is no longer among the published (current) releases.
    published = ["1.0.0", "3.0.0", "8.0.0"]
    fleet = {"2.0.0": 900, "9.0.0": 800, "8.0.0": 700, "0.5.0": 600, "1.0.0": 3, "3.0.0": 3}
    bases = erepo.choose_delta_bases("7.0.0", published, last_k=0, fleet=fleet, max_bases=4)
    assert bases == ["3.0.0", "1.0.0"]  # equal counts: the closer (higher) version first


def test_fleet_document_is_checked() -> None:
    ok = erepo.parse_fleet_versions(
        {"model": MODEL, "versions": {"1.0.0": 4, "garbage": 9, "2.0.0": 0}}, MODEL
    )
    assert ok.versions == {"1.0.0": 4}  # non-SemVer and empty versions cannot be bases
    with pytest.raises(erepo.FleetDocumentError, match="not 'det'"):
        erepo.parse_fleet_versions({"model": "other", "versions": {}}, MODEL)
    with pytest.raises(erepo.FleetDocumentError, match="non-negative integer"):
        erepo.parse_fleet_versions({"model": MODEL, "versions": {"1.0.0": -1}}, MODEL)
    with pytest.raises(erepo.FleetDocumentError, match="non-negative integer"):
        erepo.parse_fleet_versions({"model": MODEL, "versions": {"1.0.0": True}}, MODEL)
    with pytest.raises(erepo.FleetDocumentError, match="'versions' must be an object"):
        erepo.parse_fleet_versions({"model": MODEL, "versions": [1]}, MODEL)


def test_url_source_needs_a_token_from_the_environment() -> None:
    with pytest.raises(UsageError, match="--server-token-env"):
        erepo.fleet_lookup("https://updates.example")
    with pytest.raises(UsageError, match="empty or unset"):
        erepo.fleet_lookup("https://updates.example", token_env="TOK", env={})
    with pytest.raises(UsageError, match="must not carry credentials"):
        erepo.fleet_lookup("https://u:secret@updates.example", token_env="TOK", env={"TOK": "x"})


# --- against a repository -------------------------------------------------------------------


@dataclass
class Repo:
    path: Path
    tmp: Path
    release_ref: str
    archive_ref: str
    fleet_ref: str
    fleet_pub: str

    def bundle(self, version: str, data: bytes) -> Path:
        model = self.tmp / f"{MODEL}-{version}.bin"
        model.write_bytes(data)
        out = self.tmp / f"{MODEL}-{version}.edgepkg"
        write_bundle(
            model, out,
            manifest_fields={"name": MODEL, "version": version, "format": "raw",
                             "requirements": {"arch": "aarch64"}},
            signer=ekeys.load_signer(self.release_ref),
            recipients=[ekeys.load_public_key(self.fleet_ref),
                        ekeys.load_public_key(self.archive_ref)],
        )
        return out

    def fleet_file(self, versions: dict[str, int]) -> str:
        path = self.tmp / "fleet.json"
        path.write_text(json.dumps({"model": MODEL, "versions": versions}))
        return str(path)

    def deltas_of(self, version: str) -> set[str]:
        return {r.base_version or "" for r in erepo.list_releases(self.path)
                if r.kind == "delta" and r.version == version}


def _make_repo(tmp: Path, *, know_fleet_key: bool = True) -> Repo:
    keys = role_keys(tmp / "keys")
    release = write_key(tmp / "keys" / "release.pem", "ed25519")
    archive = write_key(tmp / "keys" / "archive.pem", "p256")
    fleet = write_key(tmp / "keys" / "fleet.pem", "p256")
    fleet_pub = write_public(fleet, tmp / "keys" / "fleet.pub.pem")
    path = tmp / "repo"
    erepo.init_repo(path, keys, release_signer=release, archive_key=archive,
                    recipients=[fleet_pub] if know_fleet_key else [])
    return Repo(path, tmp, release, archive, fleet, fleet_pub)


@pytest.fixture()
def repo(tmp_path: Path) -> Repo:
    return _make_repo(tmp_path)


def _lineage(n: int, size: int = 256 * KB) -> list[bytes]:
    """``n`` versions of a float32 weight file, each retraining the last 5 % of the previous."""
    w = np.random.default_rng(1).standard_normal(size // 4).astype(np.float32)
    out = [w.tobytes()]
    for i in range(1, n):
        w = w.copy()
        tail = len(w) // 20
        w[-tail:] = np.random.default_rng(100 + i).standard_normal(tail)
        out.append(w.tobytes())
    return out


def _publish_history(repo: Repo, versions: list[str], data: list[bytes]) -> None:
    # deltas=0: the history itself needs no deltas, only the release under test does.
    erepo.publish(repo.path, [repo.bundle(v, d) for v, d in zip(versions, data, strict=True)],
                  deltas=0)


def test_publish_makes_deltas_from_the_most_run_published_lower_versions(repo: Repo) -> None:
    data = _lineage(5)
    _publish_history(repo, ["1.0.0", "2.0.0", "3.0.0", "4.0.0"], data[:4])
    erepo.revoke(repo.path, MODEL, "2.0.0")
    fleet = erepo.fleet_lookup(repo.fleet_file(
        {"1.0.0": 50, "2.0.0": 400, "3.0.0": 7, "4.0.0": 1, "9.9.0": 900}
    ))
    result = erepo.publish(repo.path, [repo.bundle("5.0.0", data[4])], deltas=0, fleet=fleet,
                           delta_max_bases=2)
    made = [p.base_version for p in result.published if p.kind == "delta"]
    assert made == ["1.0.0", "3.0.0"], result.skipped_deltas  # by count; revoked/higher skipped
    assert repo.deltas_of("5.0.0") == {"1.0.0", "3.0.0"}


def test_fleet_base_whose_delta_is_not_smaller_than_the_margin_is_skipped(repo: Repo) -> None:
    data = _lineage(2)
    unrelated = np.random.default_rng(99).standard_normal(len(data[0]) // 4).astype(np.float32)
    _publish_history(repo, ["1.0.0", "2.0.0"], [unrelated.tobytes(), data[0]])
    fleet = erepo.fleet_lookup(repo.fleet_file({"1.0.0": 300, "2.0.0": 20}))
    result = erepo.publish(repo.path, [repo.bundle("3.0.0", data[1])], deltas=0, fleet=fleet)
    assert [p.base_version for p in result.published if p.kind == "delta"] == ["2.0.0"]
    assert any("1.0.0->3.0.0" in s and "not below 0.9" in s for s in result.skipped_deltas)


def test_backfill_makes_a_skipped_delta_that_a_tuf_client_fetches(tmp_path: Path) -> None:
    from edgepkg.delta import apply_delta

    repo = _make_repo(tmp_path, know_fleet_key=False)
    data = _lineage(2)
    erepo.publish(repo.path, [repo.bundle("1.0.0", data[0])])
    first = erepo.publish(repo.path, [repo.bundle("2.0.0", data[1])])
    assert any("unknown to the repository" in s for s in first.skipped_deltas)
    assert repo.deltas_of("2.0.0") == set()

    fleet_json = repo.fleet_file({"1.0.0": 10})
    assert cli_main(["repo", "deltas", str(repo.path), "--model", MODEL, "--version", "2.0.0",
                     "--recipient", repo.fleet_pub, "--delta-from-fleet", fleet_json,
                     "--json"]) == 0
    assert repo.deltas_of("2.0.0") == {"1.0.0"}
    version_after = erepo.targets_version(repo.path)
    assert version_after == first.targets_version + 1

    # Nothing missing any more: no new metadata.
    again = erepo.make_missing_deltas(repo.path, MODEL, "2.0.0",
                                      fleet=erepo.fleet_lookup(fleet_json))
    assert again.published == [] and erepo.targets_version(repo.path) == version_after

    client = make_client(repo.path, tmp_path / "client")
    client.refresh()
    info = client.get_targetinfo(f"models/{MODEL}/2.0.0/delta-from-1.0.0.edgepkg")
    assert info is not None
    summary = info.custom["edgepkg"]
    patch = tmp_path / "patch.bin"
    patch.write_bytes(b"".join(open_plaintext(
        client.download_target(info), keys=[ekeys.load_recipient_key(repo.fleet_ref)],
        trusted_keys=[ekeys.load_public_key(repo.release_ref)],
    )))
    old = tmp_path / "old.bin"
    old.write_bytes(data[0])
    rebuilt = tmp_path / "rebuilt.bin"
    apply_delta(old, patch, rebuilt, expected_sha256=summary["sha256"],
                expected_length=summary["length"])
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == hashlib.sha256(data[1]).hexdigest()


def test_backfill_refuses_a_release_that_is_not_published(repo: Repo) -> None:
    with pytest.raises(RepoError, match="not published"):
        erepo.make_missing_deltas(repo.path, MODEL, "1.0.0")


# --- the update server as the source ---------------------------------------------------------


@pytest.fixture()
def live_server(tmp_path: Path) -> Iterator[tuple[str, object]]:
    from update_server import schema
    from update_server.app import create_app
    from update_server.config import load_config
    from update_server.db import get_db

    url = f"sqlite:///{tmp_path / 'server.db'}"
    schema.upgrade(url)
    cfg = load_config(env={}, database_url=url, testing=True, repo_dir=str(tmp_path))
    app = create_app(cfg, release_reader=lambda _d: [])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(5)
        get_db(app).dispose()


def _enroll_running(app: object, versions: list[str | None]) -> list[str]:
    """Enroll one software device per entry and check it in running that version."""
    from update_server.auth import create_enrollment_token
    from update_server.db import get_db
    from update_server.testing import SoftwareDevice

    client = app.test_client()  # type: ignore[attr-defined]
    ids = []
    for version in versions:
        dev = SoftwareDevice()
        with get_db(app).session() as s:  # type: ignore[arg-type]
            _, token = create_enrollment_token(s)
        r = client.post("/api/v1/enroll", data=dev.enroll_body(token),
                        content_type="application/json")
        assert r.status_code == 201, r.get_json()
        slots = {"a": {"version": version, "sha256": "a" * 64} if version else None, "b": None}
        body = json.dumps({"models": {MODEL: {"active_slot": "a", "slots": slots}},
                           "state": "IDLE", "free_disk_bytes": 10**9}).encode()
        path = f"/api/v1/devices/{dev.device_id}/checkin"
        r = client.post(path, data=body, headers=dev.signed_headers("POST", path, body))
        assert r.status_code == 200, r.get_json()
        ids.append(dev.device_id)
    return ids


def _operator_token(app: object, role: str) -> str:
    from update_server.auth import create_operator_token
    from update_server.db import get_db

    with get_db(app).session() as s:  # type: ignore[arg-type]
        _, token = create_operator_token(s, name=f"ci-{role}", role=role)
    return token


def test_server_counts_enabled_devices_per_version(live_server: tuple[str, object]) -> None:
    base, app = live_server
    ids = _enroll_running(app, ["1.0.0", "1.0.0", "1.0.0", "3.0.0", "2.0.0", None])
    client = app.test_client()  # type: ignore[attr-defined]
    admin = {"Authorization": f"Bearer {_operator_token(app, 'admin')}"}
    r = client.patch(f"/api/v1/devices/{ids[4]}", json={"status": "disabled"}, headers=admin)
    assert r.status_code == 200
    env = {"FLEET_TOKEN": _operator_token(app, "viewer")}
    lookup = erepo.fleet_lookup(base, token_env="FLEET_TOKEN", env=env)
    assert dict(lookup(MODEL).versions) == {"1.0.0": 3, "3.0.0": 1}  # disabled 2.0.0 left out
    assert dict(lookup("other").versions) == {}

    bad = erepo.fleet_lookup(base, token_env="T", env={"T": "epo_wrong"})
    with pytest.raises(RepoError, match=r"HTTP 401.*check the token in T"):
        bad(MODEL)
    assert client.get(f"/api/v1/fleet/versions?model={MODEL}").status_code == 401
    assert client.get("/api/v1/fleet/versions", headers=admin).status_code == 400


def test_publish_takes_the_distribution_from_the_update_server(
    repo: Repo, live_server: tuple[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, app = live_server
    data = _lineage(4)
    _publish_history(repo, ["1.0.0", "2.0.0", "3.0.0"], data[:3])
    _enroll_running(app, ["1.0.0", "1.0.0", "2.0.0"])
    monkeypatch.setenv("EDGEPKG_FLEET_TOKEN", _operator_token(app, "viewer"))
    assert cli_main(["publish", str(repo.bundle("4.0.0", data[3])), "--repo", str(repo.path),
                     "--deltas", "0", "--delta-from-fleet", base,
                     "--server-token-env", "EDGEPKG_FLEET_TOKEN", "--json"]) == 0
    assert repo.deltas_of("4.0.0") == {"1.0.0", "2.0.0"}  # 3.0.0: no device runs it
