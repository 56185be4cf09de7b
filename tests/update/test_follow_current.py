"""elma-ask (and elma-bench) default to MODELS_DIR/current; elma-ask -i moves to a new release between questions."""

import io
import json
import logging
import shutil

import pytest

pytest.importorskip("onnxruntime")

from elma.ask_cli import FollowCurrent, find_default_model  # noqa: E402
from elma.ask_cli import main as ask_main  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402
from elma.update.store import ModelStore  # noqa: E402

CONTEXT = "Rollo led the Norse raiders near the old bridge of Rouen."


@pytest.fixture
def models(tiny_bundles, tmp_path, monkeypatch):
    bundle = tiny_bundles.bundle("bert")
    store = ModelStore(tmp_path / "models")
    for v in (1, 2):  # 1 current, 2 staged (elma update is about to switch to it)
        d = store.staging_dir(v)
        d.rmdir()
        shutil.copytree(bundle, d)
        store.commit_staged(v)
        if v == 1:
            store.switch_to(1)
    monkeypatch.delenv("ELMA_MODEL", raising=False)
    monkeypatch.setenv("ELMA_MODELS_DIR", str(tmp_path / "models"))
    return store


def test_default_model_is_the_installed_release(models, monkeypatch):
    assert find_default_model() == models.root / "current"
    monkeypatch.setenv("ELMA_MODEL", "/elsewhere")
    assert str(find_default_model()) == "/elsewhere"


def test_follow_current_reopens_when_the_symlink_moves(models):
    link = models.root / "current"
    rt = Runtime.open(link, policy="none")
    follow = FollowCurrent(link, lambda p: Runtime.open(p, policy="none"), rt)
    assert follow.get() is rt and rt.info.path == models.release_dir(1).resolve()
    models.switch_to(2)
    new = follow.get()
    assert new is not rt and new.info.path == models.release_dir(2).resolve() and follow.get() is new
    new.close()


def test_interactive_elma_ask_answers_each_question_with_the_release_current_then(models, caplog):
    class Stdin(io.StringIO):
        def isatty(self):
            return False

        def readline(self, *a):
            line = super().readline(*a)
            if line.startswith("Where"):
                models.switch_to(2)  # elma update finished between the two questions
            return line

    out = io.StringIO()
    caplog.set_level(logging.INFO, logger="elma-ask")
    rc = ask_main(["-i", "--context", CONTEXT, "--json", "--policy", "none"], stdin=Stdin("Who led the raiders?\nWhere?\n"),
                  stdout=out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rc == 0 and len(answers) == 2
    moved = [r.getMessage() for r in caplog.records if "model updated" in r.getMessage()]
    assert len(moved) == 1 and moved[0].endswith("releases/2"), moved
