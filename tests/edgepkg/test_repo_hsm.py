"""TUF metadata signed inside a PKCS#11 token (SoftHSM2) is accepted by python-tuf's ngclient."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from edgepkg import keys as ekeys, repo as erepo
from tests.edgepkg._repo_support import make_client, write_key

pytestmark = pytest.mark.softhsm


def test_hsm_signed_repository_accepted_by_ngclient(
    softhsm_token, tmp_path: Path, monkeypatch
) -> None:
    token_uri = softhsm_token.uri()
    monkeypatch.setenv("EDGEPKG_PKCS11_PIN", softhsm_token.pin)  # the config holds no PIN
    refs = {}
    for role in ("root", "targets", "snapshot", "timestamp"):
        ekeys.generate_token_keypair(token_uri, f"tuf-{role}", usage="sign")
        refs[role] = [ekeys.key_uri(token_uri, f"tuf-{role}", include_pin=False)]
    release = write_key(tmp_path / "release.pem")
    repo = tmp_path / "repo"
    erepo.init_repo(repo, refs, release_keys=[release])
    root = Metadata.from_file(str(repo / "metadata" / "1.root.json")).signed
    assert {k.scheme for k in root.keys.values()} == {"ecdsa-sha2-nistp256"}

    model = tmp_path / "m.bin"
    model.write_bytes(b"\x01" * 4096)
    bundle = tmp_path / "m.edgepkg"
    from edgepkg.bundle import write_bundle

    fleet = write_key(tmp_path / "fleet.pem", "p256")
    write_bundle(
        model,
        bundle,
        manifest_fields={"name": "det", "version": "1.0.0", "format": "raw"},
        signer=ekeys.load_signer(release),
        recipients=[ekeys.load_public_key(fleet)],
    )
    erepo.publish(repo, [bundle])
    erepo.refresh(repo, force=True)

    # Root rotation to a second token key, signed by the old and the new key in the token.
    ekeys.generate_token_keypair(token_uri, "tuf-root-2", usage="sign")
    old = erepo.load_config(repo).role("root").keys[0].keyid
    erepo.rotate(
        repo, "root", add=[ekeys.key_uri(token_uri, "tuf-root-2", include_pin=False)], remove=[old]
    )

    client = make_client(repo, tmp_path / "client", root_version=1)
    client.refresh()
    info = client.get_targetinfo("models/det/1.0.0/det-1.0.0.edgepkg")
    assert info is not None
    assert Path(client.download_target(info)).read_bytes() == bundle.read_bytes()
    assert client._trusted_set.root.version == 2


def test_init_refuses_a_pin_inside_a_key_reference(softhsm_token, tmp_path: Path) -> None:
    from edgepkg.errors import UsageError

    token_uri = softhsm_token.uri()
    ekeys.generate_token_keypair(token_uri, "k", usage="sign")
    with_pin = ekeys.key_uri(token_uri, "k", include_pin=True)
    refs = {r: [with_pin] for r in ("root", "targets", "snapshot", "timestamp")}
    with pytest.raises(UsageError, match="PIN"):
        erepo.init_repo(tmp_path / "repo", refs)
    assert not (tmp_path / "repo").exists()
