"""Publishing: versions only grow, the release is what a device verifies, keys stay on the publishing machine,
rotation and refresh; and elma-serve --releases serves the repository to authenticated devices only."""

import json

import pytest

pytest.importorskip("nacl")
pytest.importorskip("onnxruntime")

from update_helpers import TOKEN, Keys, new_repo  # noqa: E402

from elma.cli import main as elma_main  # noqa: E402
from elma.update import publish as pub  # noqa: E402
from elma.update.metadata import verify_release  # noqa: E402
from elma.update.signing import generate_key  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return tiny_bundles.bundle("bert")


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path)


def test_publish_versions_grow_and_the_release_verifies(tmp_path, keys, bundle):
    repo = new_repo(tmp_path, keys)
    r1 = pub.publish(repo, bundle, keys.release)
    r2 = pub.publish(repo, bundle, keys.release, scores={"new_f1": 50.0})
    assert (r1.version, r2.version) == (1, 2)
    release = verify_release(pub.latest_root(repo), (repo / "release.json").read_bytes(), "release.json")
    assert release.version == 2 and release.scores == {"new_f1": 50.0}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(release.files) == set(manifest["files"]) | {"manifest.json"}
    assert release.backbone == manifest["backbone"] and len(release.health["checks"]) == 3
    for name, rec in release.files.items():
        assert (repo / "targets" / "2" / name).stat().st_size == rec["size_bytes"]
    text = b"".join(p.read_bytes() for p in repo.rglob("*") if p.is_file())
    assert keys.root.seed_hex.encode() not in text and keys.release.seed_hex.encode() not in text


def test_only_a_release_key_of_the_root_may_publish(tmp_path, keys, bundle):
    repo = new_repo(tmp_path, keys)
    for key in (keys.root, generate_key(tmp_path / "other.key")):
        with pytest.raises(Exception, match="not a release key"):
            pub.publish(repo, bundle, key)
    assert not (repo / "release.json").exists() and not (repo / "targets").exists()


def test_rotation_then_refresh_keeps_the_version(tmp_path, keys, bundle):
    repo = new_repo(tmp_path, keys)
    pub.publish(repo, bundle, keys.release)
    new_root, new_rel = generate_key(tmp_path / "r2.key"), generate_key(tmp_path / "rel2.key")
    pub.rotate(repo, keys.root, new_root, new_rel)
    root = pub.latest_root(repo)
    assert root.version == 2
    with pytest.raises(Exception, match="unknown key"):  # the old release key no longer counts
        verify_release(root, (repo / "release.json").read_bytes(), "release.json")
    r = pub.refresh(repo, new_rel)
    assert r.version == 1 and verify_release(root, (repo / "release.json").read_bytes(), "r").version == 1
    assert pub.publish(repo, bundle, new_rel).version == 2


def test_cli_keys_publish_and_refusals(tmp_path, capsys, bundle):
    k = str(tmp_path / "root.key"), str(tmp_path / "rel.key")
    assert elma_main(["keys", "generate", k[0]]) == 0 and elma_main(["keys", "generate", k[1]]) == 0
    assert elma_main(["keys", "generate", k[0]]) == 2  # never replaced unasked
    repo = str(tmp_path / "repo")
    assert elma_main(["keys", "init", "--repo", repo, "--root-key", k[0], "--release-key", k[1]]) == 0
    assert elma_main(["keys", "init", "--repo", repo, "--root-key", k[0], "--release-key", k[1]]) == 2
    report = tmp_path / "finetune_report.json"
    report.write_text(json.dumps({"published": False, "base_f1": 50.0, "new_f1": 49.0}))
    capsys.readouterr()
    assert elma_main(["publish", str(bundle), "--repo", repo, "--key", k[1], "--finetune-report", str(report)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not published" in err and len(err.splitlines()) == 1 and not (tmp_path / "repo" / "release.json").exists()
    report.write_text(json.dumps({"published": True, "base_f1": 50.0, "new_f1": 52.5, "new_exits": [],
                                  "config": {"heldout_file": "h.json"}}))
    assert elma_main(["publish", str(bundle), "--repo", repo, "--key", k[1], "--finetune-report", str(report)]) == 0
    assert "published release 1" in capsys.readouterr().out
    signed = json.loads((tmp_path / "repo" / "release.json").read_text())["signed"]
    assert signed["scores"]["new_f1"] == 52.5 and signed["scores"]["heldout_file"] == "h.json"
    rel2 = str(tmp_path / "rel2.key")
    assert elma_main(["keys", "generate", rel2]) == 0
    assert elma_main(["publish", "--refresh", "--repo", repo, "--key", rel2]) == 2  # not a release key yet
    assert elma_main(["keys", "rotate", "--repo", repo, "--root-key", k[0], "--release-key", rel2]) == 0
    assert elma_main(["publish", "--refresh", "--repo", repo, "--key", rel2]) == 0
    assert "re-signed release 1" in capsys.readouterr().out and pub.latest_root(tmp_path / "repo").version == 2


def test_elma_serve_refuses_a_releases_folder_that_is_not_a_repository(tmp_path, capsys):
    from elma.offload.server import hash_token
    from elma.serve_cli import main as serve_main

    (tmp_path / "tokens.txt").write_text(f"d {hash_token('t')}\n")
    assert serve_main(["--tokens", str(tmp_path / "tokens.txt"), "--releases", str(tmp_path)]) == 2
    assert "not a release repository" in capsys.readouterr().err


def test_server_serves_release_files_to_devices_only(tmp_path, keys, bundle):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from elma.offload.server import RecordStore, ServeConfig, create_app, hash_token

    repo = new_repo(tmp_path, keys)
    pub.publish(repo, bundle, keys.release)
    (tmp_path / "secret.txt").write_text("outside")
    store = RecordStore(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    app = create_app(ServeConfig(releases_dir=str(repo)), lambda q, c: {}, store, {hash_token(TOKEN): "d"})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        assert client.get("/v1/releases/release.json").status_code == 401
        whole = (repo / "targets/1/weights.bin").read_bytes()
        r = client.get("/v1/releases/targets/1/weights.bin", headers={**auth, "Range": "bytes=10-"})
        assert r.status_code == 206 and r.content == whole[10:]
        assert r.headers["content-range"] == f"bytes 10-{len(whole) - 1}/{len(whole)}"
        for bad in ("../secret.txt", "targets/../../secret.txt", ".hidden", "targets/1", "nope.json"):
            assert client.get(f"/v1/releases/{bad}", headers=auth).status_code == 404, bad
    store.close()
