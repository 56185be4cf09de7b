"""The whole loop on loopback: elma-serve (full-depth answers, records, releases), a device that answers and
offloads with the installed release, `elma sync --upload`, `elma finetune` on the records (tiny model), `elma export`,
`elma publish`, `elma update`, and the device answering with the new release; a finetune that does not improve
publishes nothing and the device stays as it is."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("nacl")

from conftest import PASSAGES, squad_payload  # noqa: E402
from update_helpers import TOKEN, Keys, new_device, new_repo, update_argv  # noqa: E402

from elma.cli import main as elma_main  # noqa: E402
from elma.offload.client import OffloadClient, OffloadConfig  # noqa: E402
from elma.offload.queue import RecordQueue  # noqa: E402
from elma.offload.server import BackgroundServer, RecordStore, RuntimeAnswerer, ServeConfig, create_app, hash_token  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402
from elma.update import publish as pub  # noqa: E402
from elma.update.store import ModelStore  # noqa: E402

UNSOLVED = "maxprob:1"  # a tiny random model is never 100% sure: every question is offloaded


def test_records_become_a_better_model_that_reaches_the_device(tiny_bundles, tmp_path, capsys):
    model, bundle = tiny_bundles.model("bert"), tiny_bundles.bundle("bert")
    keys = Keys(tmp_path)
    repo = new_repo(tmp_path, keys)
    assert elma_main(["publish", str(bundle), "--repo", str(repo), "--key", str(keys.release_file)]) == 0
    db = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    store = RecordStore(db)
    answerer = RuntimeAnswerer(Runtime.open(bundle, policy="none"))
    app = create_app(ServeConfig(releases_dir=str(repo), rate_per_s=1000, burst=1000), answerer, store,
                     {hash_token(TOKEN): "jetson-01"})
    server = BackgroundServer(app).start()
    try:
        models = new_device(tmp_path, repo)
        argv = update_argv(server, tmp_path, models)
        assert elma_main(argv) == 0 and ModelStore(models).current_version() == 1

        # the device answers with the installed release and offloads what it cannot settle
        queue_path = tmp_path / "device-queue.sqlite3"
        client = OffloadClient(OffloadConfig(server.url, token=TOKEN, deadline_ms=10_000), RecordQueue(queue_path))
        with Runtime.open(models / "current", policy=UNSOLVED) as rt:
            results = [client.ask(rt, q, c) for c, qas in PASSAGES for q, _ in qas]
        client.queue.close()
        assert all(r.offloaded for r in results) and store.count() == 0
        assert elma_main(["sync", "--server", server.url, "--token-file", str(tmp_path / "device.token"), "--upload",
                          "--queue", str(queue_path)]) == 0
        assert store.count() == len(results)

        # the server fine-tunes on the records, exports and publishes
        train, heldout = tmp_path / "train.json", tmp_path / "heldout.json"
        train.write_text(json.dumps(squad_payload(copies=2)))
        heldout.write_text(json.dumps(squad_payload(copies=1)))
        ft = ["finetune", "--errors", db, "--base", str(model), "--train-file", str(train), "--heldout", str(heldout),
              "--max-steps", "2", "--batch-size", "4", "--threads", "1", "--original-per-error", "1",
              "--learning-rate", "1e-3"]
        new_model = tmp_path / "model-ft1"
        assert elma_main(ft + ["-o", str(new_model), "--min-f1-gain", "-1000"]) == 0
        new_bundle = tmp_path / "bundle-ft1"
        assert elma_main(["export", str(new_model), "-o", str(new_bundle), "--threads", "1"]) == 0
        assert elma_main(["publish", str(new_bundle), "--repo", str(repo), "--key", str(keys.release_file),
                          "--finetune-report", str(new_model / "finetune_report.json")]) == 0
        capsys.readouterr()

        # the device updates and answers with the new release
        assert elma_main(argv) == 0 and "installed release 2 (previous 1)" in capsys.readouterr().out
        installed = ModelStore(models)
        assert installed.current_version() == 2
        old_w = json.loads((models / "releases/1/release.json").read_text())["signed"]["files"]["weights.bin"]
        new_w = json.loads((models / "current/release.json").read_text())["signed"]["files"]["weights.bin"]
        assert old_w["sha256"] != new_w["sha256"]
        scores = json.loads((models / "current/release.json").read_text())["signed"]["scores"]
        assert scores["new_f1"] == json.loads((new_model / "finetune_report.json").read_text())["new_f1"]
        q, c = PASSAGES[0][1][0][0], PASSAGES[0][0]
        with Runtime.open(models / "current", policy="none") as device, Runtime.open(new_bundle, policy="none") as ref:
            assert device.info.path == installed.release_dir(2).resolve()
            a, b = device.ask(q, c), ref.ask(q, c)
            assert (a.text, a.no_answer, a.score) == (b.text, b.no_answer, b.score)

        # a finetune that does not improve: nothing to export or publish, the device stays on release 2
        refused = tmp_path / "model-ft2"
        assert elma_main(ft + ["-o", str(refused), "--min-f1-gain", "1000"]) == 1 and not refused.exists()
        report = tmp_path / "model-ft2.work" / "finetune_report.json"
        assert elma_main(["publish", str(new_bundle), "--repo", str(repo), "--key", str(keys.release_file),
                          "--finetune-report", str(report)]) == 2
        assert pub.latest_version(repo) == 2
        capsys.readouterr()
        assert elma_main(argv) == 0 and "up to date: release 2" in capsys.readouterr().out
    finally:
        server.stop()
        answerer.close()
        store.close()
