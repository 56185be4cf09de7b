"""Learn then Test calibration (elma.runtime.certify): the guarantee holds over many random splits, a setting
whose true risk exceeds delta is not certified, the sequence stops at its first failure, the split keeps
articles together, and ``elma calibrate`` certifies a tiny bundle's settings and stores the default."""

import json
import shutil

import numpy as np
import pytest

from elma.data.squad import parse_squad
from elma.runtime.certify import PolicyCertificate, certify_sequence, choose_default, split_questions

DELTA, EPSILON = 0.05, 0.1


def population(rng, questions=8000, settings=40, fractional=False):
    """(S, M) per-question losses of S settings ordered by aggressiveness: true risk rises from 0 to 3 delta and
    mean layers fall. Coupled through one uniform per question, so that a later setting loses wherever an
    earlier one does (as exiting earlier does); ``fractional`` makes part of each loss an F1-like fraction."""
    u = rng.random(questions)
    true = np.linspace(0.0, 3 * DELTA, settings)
    losses = (u[None, :] < true[:, None]).astype(np.float64)
    if fractional:  # a loss of 1 becomes a drop anywhere in (0, 1]; the risk stays below the binary one
        losses *= rng.uniform(0.2, 1.0, questions)[None, :]
    layers = np.linspace(12.0, 2.0, settings)[:, None] + rng.normal(0, 0.5, questions)[None, :]
    return losses, layers


def draw(rng, losses, layers, n_learn, n_test):
    idx = rng.permutation(losses.shape[1])
    learn, test, rest = idx[:n_learn], idx[n_learn:n_learn + n_test], idx[n_learn + n_test:]
    res = certify_sequence(losses[:, learn].mean(1), layers[:, learn].mean(1), losses[:, test].mean(1),
                           layers[:, test].mean(1), n_test, DELTA, EPSILON)
    return res, test, rest


@pytest.mark.parametrize("fractional", [False, True])
def test_realised_risk_exceeds_delta_in_at_most_about_epsilon_of_the_draws(fractional):
    rng = np.random.default_rng(7)
    losses, layers = population(rng, fractional=fractional)
    draws, over, naive_over, certified_risks = 300, 0, 0, []
    for _ in range(draws):
        res, test, rest = draw(rng, losses, layers, 300, 800)
        chosen = res.chosen if res.chosen is not None else 0  # nothing certified: the deepest setting
        over += losses[chosen, rest].mean() > DELTA
        certified_risks.append(losses[chosen].mean())
        # The old rule, fewest layers with empirical risk <= delta, has no guarantee: it shows the check has teeth.
        ok = np.flatnonzero(losses[:, test].mean(1) <= DELTA)
        naive = ok[np.argmin(layers[ok, :][:, test].mean(1))]
        naive_over += losses[naive, rest].mean() > DELTA
    tolerance = 3 * np.sqrt(EPSILON * (1 - EPSILON) / draws)
    assert over / draws <= EPSILON + tolerance, (over, draws)
    assert naive_over / draws > 0.3, "the unguarded rule overshoots often; else this population tests nothing"
    assert np.median(certified_risks) > DELTA / 2, "the certified setting is not vacuous"


def signed_population(rng, questions=8000, settings=30):
    """(S, M) signed F1 drops in [-1, 1] of S settings, ever more aggressive: the share of questions an early exit
    answers worse rises from 0 to 12%, the share it answers better from 0 to 4%, so the true mean drop rises from
    0 to 3 delta; mean layers fall."""
    u, size = rng.random(questions), rng.uniform(0.2, 1.0, questions)
    worse = np.linspace(0.0, 0.12, settings)[:, None]
    better = np.linspace(0.0, 0.04, settings)[:, None]
    drops = np.where(u[None, :] < worse, size, 0.0) - np.where(u[None, :] > 1 - better, size, 0.0)
    layers = np.linspace(12.0, 2.0, settings)[:, None] + rng.normal(0, 0.5, questions)[None, :]
    return drops, layers


def test_f1_mean_by_betting_holds_its_guarantee_and_certifies_more_than_the_positive_part():
    """The f1-mean risk (gains counted) tested by betting: over many random splits the realised mean drop on the
    questions left out exceeds delta in at most about epsilon of them; and its certified settings are more
    aggressive than those of the f1 risk (gains not counted, Hoeffding-Bentkus) on the same draws."""
    from elma.runtime.certify import p_value

    rng = np.random.default_rng(17)
    drops, layers = signed_population(rng)
    delta = 0.024  # 2.4 points; true mean drops run 0 to 0.0576
    draws, over, deeper, naive_over, certified = 200, 0, 0, 0, []
    for _ in range(draws):
        idx = rng.permutation(drops.shape[1])
        learn, test, rest = idx[:400], idx[400:2400], idx[2400:]
        p = np.array([p_value(drops[s, test], "f1-mean", delta, EPSILON, "wsr") for s in range(len(drops))])
        res = certify_sequence(drops[:, learn].mean(1), layers[:, learn].mean(1), drops[:, test].mean(1),
                               layers[:, test].mean(1), test.size, delta, EPSILON, p)
        chosen = res.chosen if res.chosen is not None else 0
        over += drops[chosen, rest].mean() > delta
        certified.append(drops[chosen].mean())
        ok = np.flatnonzero(drops[:, test].mean(1) <= delta)  # no guarantee: shows the check has teeth
        naive_over += drops[ok[np.argmin(layers[ok, :][:, test].mean(1))], rest].mean() > delta
        positive = np.maximum(0.0, drops)
        old = certify_sequence(positive[:, learn].mean(1), layers[:, learn].mean(1), positive[:, test].mean(1),
                               layers[:, test].mean(1), test.size, delta, EPSILON)
        deeper += (old.chosen or 0) < chosen
    assert over / draws <= EPSILON + 3 * np.sqrt(EPSILON * (1 - EPSILON) / draws), over
    assert naive_over / draws > 0.3 and np.median(certified) > delta / 2, (naive_over, np.median(certified))
    assert deeper / draws > 0.9, "counting gains must let more aggressive settings through"


def test_a_setting_whose_true_risk_exceeds_delta_is_not_certified():
    rng = np.random.default_rng(3)
    u = rng.random(20000)
    losses = np.stack([np.zeros_like(u), (u < 1.3 * DELTA).astype(float), (u < 2 * DELTA).astype(float)])
    layers = np.stack([np.full_like(u, 12.0), np.full_like(u, 6.0), np.full_like(u, 3.0)])
    for _ in range(100):
        res, _, _ = draw(rng, losses, layers, 500, 2000)
        assert res.passed == 1 and res.chosen == 0, (res.passed, res.p_values)
    # At delta plus a hair, it may pass, but in no more than about epsilon of the draws.
    losses[1] = (u < 1.02 * DELTA).astype(float)
    passed = sum(draw(rng, losses, layers, 500, 2000)[0].passed > 1 for _ in range(300))
    assert passed / 300 <= EPSILON + 3 * np.sqrt(EPSILON * (1 - EPSILON) / 300)


def test_the_sequence_stops_at_its_first_failure():
    # Learn order: A (risk 0), B, C. B fails on the test part; C would pass but comes after the failure.
    learn_risk, learn_layers = np.array([0.0, 0.01, 0.02]), np.array([12.0, 6.0, 3.0])
    test_risk, test_layers = np.array([0.0, 0.2, 0.0]), np.array([12.0, 6.0, 3.0])
    res = certify_sequence(learn_risk, learn_layers, test_risk, test_layers, 1000, DELTA, EPSILON)
    assert res.order.tolist() == [0, 1, 2] and res.p_values[2] <= EPSILON < res.p_values[1]
    assert res.passed == 1 and res.chosen == 0
    # Without the failure, the certified setting with the fewest layers is chosen, wherever it is in the order.
    test_risk[1] = 0.0
    res = certify_sequence(learn_risk, learn_layers, test_risk, test_layers, 1000, DELTA, EPSILON)
    assert res.passed == 3 and res.chosen == 2


def test_order_is_most_conservative_first():
    res = certify_sequence(np.array([0.03, 0.0, 0.0, 0.01]), np.array([4.0, 9.0, 11.0, 6.0]), np.zeros(4),
                           np.zeros(4), 100, 0.5, 0.1)
    assert res.order.tolist() == [2, 1, 3, 0], "ascending learn risk, ties deepest first"


def test_default_is_the_fastest_certified_setting():
    def cert(name, spec, layers):
        return PolicyCertificate(name, 10, 3 if spec else 0, spec, layers, 0.1 if spec else None, 0.01, None,
                                 None, None, None)
    certs = {"entropy": cert("entropy", "entropy:1,1", 4.0), "static": cert("static", "static:5", 5.0),
             "maxprob": cert("maxprob", None, None)}
    assert choose_default(certs) == "entropy:1,1"
    assert choose_default(certs, "static") == "static:5"
    assert choose_default({"maxprob": certs["maxprob"]}) == "none", "nothing certified: full depth"
    slow = {"entropy": cert("entropy", "entropy:0,0", 12.0)}
    assert choose_default(slow, num_layers=12) == "none", "no layer saved: full depth without the exit heads"
    assert choose_default(slow, "entropy", num_layers=12) == "entropy:0,0", "a named policy is kept"
    with pytest.raises(ValueError, match="no certified setting"):
        choose_default(certs, "maxprob")


def payload(articles=10, per_article=4, labels=True):
    data, n = [], 0
    for a in range(articles):
        paras = []
        for p in range(per_article // 2):
            context = f"Town {a} {p} lies on the river R{a}x{p}. About {a + p} people live there."
            qas = []
            for question, answer in (("Which river is it on?", f"R{a}x{p}"), ("Who won the cup?", None)):
                n += 1
                qa = {"id": f"q{n}", "question": question}
                if labels:
                    qa.update({"is_impossible": answer is None, "answers": [] if answer is None else
                               [{"text": answer, "answer_start": context.index(answer)}]})
                qas.append(qa)
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    return {"version": "v2.0", "data": data}


def test_split_keeps_articles_together_and_is_seeded():
    examples = parse_squad(payload(articles=20))
    s = split_questions(examples, 0.2, 0.25, seed=1)
    parts = [set(s.learn.tolist()), set(s.test.tolist()), set(s.check.tolist())]
    assert sum(map(len, parts)) == len(examples) and set().union(*parts) == set(range(len(examples)))
    titles = [{examples[i].title for i in part} for part in parts]
    assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2]) and s.unit == "article"
    assert len(s.check) == 16 and len(s.learn) == 16 and len(s.test) == 48
    again, other = split_questions(examples, 0.2, 0.25, seed=1), split_questions(examples, 0.2, 0.25, seed=2)
    assert again.check.tolist() == s.check.tolist() and other.check.tolist() != s.check.tolist()
    assert split_questions(examples, 0.0, 0.25).check.size == 0
    one_title = parse_squad({"data": [{"title": "t", "paragraphs": [p for a in payload(6)["data"]
                                                                    for p in a["paragraphs"]]}]})
    assert split_questions(one_title, 0.2, 0.25).unit == "paragraph"
    from elma.errors import DataError
    with pytest.raises(DataError, match="too few"):
        split_questions(parse_squad(payload(articles=1, per_article=2)), 0.2, 0.25)


# ---- on a tiny bundle -----------------------------------------------------------------------------------------

ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def bundle(tiny_bundles, tmp_path):
    return shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "bundle")


def test_consistency_on_unlabelled_questions_sets_the_runtime_default(bundle, tmp_path, capsys):
    from elma.cli import main
    from elma.runtime.bundle import load_bundle
    from elma.runtime.engine import Runtime

    data = tmp_path / "field.json"
    data.write_text(json.dumps(payload(articles=12, labels=False)))
    args = ["calibrate", str(bundle), "--data", str(data), "--risk", "consistency", "--epsilon", "0.2"]
    assert main(args + ["--delta", "80"]) == 0  # the random tiny model's layers disagree often: a loose delta
    out = capsys.readouterr().out
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    assert entry["risk"] == "consistency" and entry["delta_points"] == 80 and entry["epsilon"] == 0.2
    assert entry["n"] + entry["learn_questions"] + entry["check_questions"] == entry["questions"] == 48
    assert isinstance(entry["default"], str) and f"default policy: {entry['default']}" in out
    certified = {c["spec"]: c for c in entry["policies"].values() if c["spec"]}
    assert all(c["p_value"] <= 0.2 / 5 and c["risk_points"] < 80 for c in certified.values())
    assert entry["default"] in certified and entry["check"] == certified[entry["default"]]["check"]
    assert certified[entry["default"]]["mean_layers"] == min(c["mean_layers"] for c in certified.values()) < 3
    with Runtime.open(bundle) as rt:
        assert rt.policy.spec == entry["default"]
    # A tight delta certifies only settings that run every layer: the default is then full depth.
    assert main(args + ["--delta", "20", "--dry-run"]) == 0
    assert "default policy: none; not written" in capsys.readouterr().out
    # Labels are needed for the f1 risk; a file without them is refused with one line, manifest untouched.
    before = (bundle / "manifest.json").read_text()
    assert main(["calibrate", str(bundle), "--data", str(data), "--risk", "f1", "--delta", "1", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "48 of 48 calibration questions have no answers" in err and "--risk consistency" in err
    assert len(err.strip().splitlines()) == 1 and (bundle / "manifest.json").read_text() == before


def test_model_dir_stores_the_certified_default_where_export_and_ask_read_it(bundle, tiny_bundles, tmp_path, capsys):
    """--model-dir: the default lands in the model folder's config.json (checked against the bundle's source
    weights first), a later `elma export` carries it, and a folder of other weights or with a default is refused
    before any question is recorded."""
    from elma.cli import main
    from elma.export.bundle_writer import export_bundle
    from elma.export.specs import ExportConfig
    from elma.runtime.bundle import load_bundle
    from elma.runtime.defaults import SOURCE_CALIBRATED, read_default

    model = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "model")
    data = tmp_path / "field.json"
    data.write_text(json.dumps(payload(articles=12, labels=False)))
    args = ["calibrate", str(bundle), "--data", str(data), "--risk", "consistency", "--delta", "80", "--epsilon", "0.2"]
    assert main(args + ["--model-dir", str(model)]) == 0
    assert f"and {model / 'config.json'}" in capsys.readouterr().out
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    stored = read_default(model)
    assert stored.source == SOURCE_CALIBRATED and stored.spec == entry["default"]
    assert stored.calibration["risk"] == "consistency" and stored.calibration["n"] == entry["n"]
    assert "policies" not in stored.calibration and stored.calibration["backend"] == "onnxruntime, fp32 bundle"
    export_bundle(model, tmp_path / "again", ExportConfig(precision="fp32", threads=1))
    assert load_bundle(tmp_path / "again").manifest["exit_thresholds"]["default"] == entry["default"]

    assert main(args + ["--overwrite", "--model-dir", str(model)]) == 0, "--overwrite replaces both"
    capsys.readouterr()

    # Refused before any work, in one line, bundle and folder untouched: a default already there (2), other
    # weights (3).
    fresh = shutil.copytree(tiny_bundles.bundle("bert"), tmp_path / "fresh")
    other = shutil.copytree(tiny_bundles.model("bert"), tmp_path / "other")
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    before = [(p / n).read_text() for p, n in ((model, "config.json"), (other, "config.json"), (fresh, "manifest.json"))]
    fresh_args = ["calibrate", str(fresh)] + args[2:]
    for folder, code, msg in [(model, 2, "(a default policy, "), (other, 3, "are not those the bundle was exported from")]:
        assert main(fresh_args + ["--model-dir", str(folder)]) == code
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert [(p / n).read_text() for p, n in ((model, "config.json"), (other, "config.json"), (fresh, "manifest.json"))] == before


def test_f1_risk_and_the_old_flag(bundle, tmp_path, capsys):
    from elma.cli import main
    from elma.runtime.bundle import load_bundle

    data = tmp_path / "calib.json"
    data.write_text(json.dumps(payload(articles=12)))
    base = ["calibrate", str(bundle), "--data", str(data), "--policies", "static,entropy"]
    assert main(base + ["--max-f1-drop", "30", "--check-fraction", "0.25", "--seed", "3"]) == 0
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    assert entry["risk"] == "f1" and entry["delta_points"] == 30 and entry["epsilon"] == 0.1 and entry["seed"] == 3
    assert entry["full_depth_f1"] is not None and entry["check"]["questions"] == entry["check_questions"] > 0
    static = entry["policies"]["static"]
    assert static["spec"] is not None, "the last layer is full depth: zero loss, always certified"
    assert "check: risk" in capsys.readouterr().out
    for bad, msg in [(["--delta", "1", "--max-f1-drop", "1"], "one or the other"), ([], "--delta"),
                     (["--delta", "150"], "--delta must be"), (["--delta", "1", "--epsilon", "1"], "--epsilon"),
                     (["--delta", "1", "--policies", "wobble"], "cannot calibrate policy 'wobble'"),
                     (["--delta", "1", "--default", "maxprob"], "no certified setting")]:
        assert main(base[:4] + ["--overwrite"] + (["--policies", "static"] if "--policies" not in bad else []) + bad) == 2, bad
        assert msg in capsys.readouterr().err, bad
    assert main(base + ["--delta", "5", "--dry-run"]) == 0
    assert load_bundle(bundle).manifest["exit_thresholds"]["delta_points"] == 30, "--dry-run writes nothing"
    # 24 test questions cannot certify 1 point at epsilon 0.01, not even full depth: (0.99)^24 > 0.01 / 2.
    capsys.readouterr()
    assert main(base + ["--delta", "1", "--epsilon", "0.01", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("no setting certified (stopped at") == 2 and "default policy: none" in out


def test_f1_mean_risk_is_tested_by_betting_unless_told(bundle, tmp_path, capsys):
    """--risk f1-mean: labelled questions, betting p-values by default and said so in the output and the manifest;
    --bound hb switches the p-value; unlabelled questions are refused in one line."""
    from elma.cli import main
    from elma.runtime.bundle import load_bundle

    data = tmp_path / "calib.json"
    data.write_text(json.dumps(payload(articles=12)))
    base = ["calibrate", str(bundle), "--data", str(data), "--policies", "static,entropy", "--risk", "f1-mean",
            "--epsilon", "0.2"]
    assert main(base + ["--delta", "60"]) == 0
    out = capsys.readouterr().out
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    assert entry["risk"] == "f1-mean" and entry["method"] == "learn-then-test (fixed sequence, betting (WSR))"
    assert "betting (WSR) p-values" in out
    assert main(base + ["--delta", "60", "--bound", "hb", "--overwrite"]) == 0
    assert "Hoeffding-Bentkus p-values" in capsys.readouterr().out
    assert load_bundle(bundle).manifest["exit_thresholds"]["method"].endswith("(fixed sequence, Hoeffding-Bentkus)")
    with pytest.raises(SystemExit) as bad:
        main(base + ["--delta", "60", "--bound", "bentkus", "--overwrite"])
    assert bad.value.code == 2 and "argument --bound: invalid choice" in capsys.readouterr().err
    unlabelled = tmp_path / "field.json"
    unlabelled.write_text(json.dumps(payload(articles=12, labels=False)))
    assert main(base[:2] + ["--data", str(unlabelled), "--risk", "f1-mean", "--delta", "1", "--overwrite"]) == 2
    assert "the f1-mean risk needs labels" in capsys.readouterr().err


def test_f1_risk_against_labels_that_are_the_full_depth_answers_is_the_consistency_risk(bundle):
    """Labelled with the model's own full-depth answers, the F1 drop of every setting is its disagreement with
    full depth: the two risks must certify the same settings with the same p-values."""
    from elma.runtime.calibrate import record_all
    from elma.runtime.certify import certify
    from elma.runtime.engine import Runtime

    unlabelled = payload(articles=12, labels=False)
    with Runtime.open(bundle, policy="none") as rt:
        items = [(qa["question"], para["context"]) for a in unlabelled["data"] for para in a["paragraphs"]
                 for qa in para["qas"]]
        answers = iter(rt.ask_batch(items, policy="none"))
        for a in unlabelled["data"]:
            for para in a["paragraphs"]:
                for qa in para["qas"]:
                    ans = next(answers)
                    qa["is_impossible"] = ans.no_answer or not ans.text
                    qa["answers"] = [] if qa["is_impossible"] else [{"text": ans.text, "answer_start": ans.char_start}]
        examples = parse_squad(unlabelled)
        assert any(e.answers for e in examples)
        recorded = record_all(rt, examples)
    split = split_questions(examples, 0.2, 0.25, seed=0)
    by_f1, points, full_f1 = certify(recorded, split, "f1", 80.0, 0.2)
    by_consistency, points_c, _ = certify(recorded, split, "consistency", 80.0, 0.2)
    assert full_f1 == 100.0 and points == points_c
    for name, c in by_f1.items():
        other = by_consistency[name]
        assert (c.spec, c.passed, c.risk_points, c.p_value) == (other.spec, other.passed, other.risk_points,
                                                                other.p_value), name
    assert any(c.spec and c.risk_points > 0 for c in by_f1.values()), "some certified setting loses F1"


def test_a_skim_grid_is_certified_with_the_exit_settings_and_checked(bundle, tmp_path, capsys):
    """One more recording pass per skim setting; the skimmed settings sit in the policies' sequences, the default is
    the certified setting with the fewest token-layers, and its realised risk on the check part is reported."""
    from elma.cli import main
    from elma.runtime.bundle import load_bundle
    from elma.runtime.engine import Runtime

    data = tmp_path / "field.json"
    data.write_text(json.dumps(payload(articles=12, labels=False)))
    args = ["calibrate", str(bundle), "--data", str(data), "--risk", "consistency", "--delta", "80", "--epsilon", "0.2",
            "--policies", "static,entropy", "--skim-layers", "1", "--skim-thresholds", "0.02,0.05"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 recording pass(es)" in out and "skim grid: skim:1,0.02, skim:1,0.05" in out
    entry = load_bundle(bundle).manifest["exit_thresholds"]
    assert entry["recording_passes"] == 3 and entry["skim_grid"] == ["skim:1,0.02", "skim:1,0.05"]
    assert entry["cost"] == "token-layers" and entry["full_depth_token_layers"] > 0
    static = entry["policies"]["static"]
    assert static["settings"] == 3 * 3, "static:1..3 on each of the three records"
    certified = {c["spec"]: c for c in entry["policies"].values() if c["spec"]}
    best = min(certified.values(), key=lambda c: (c["mean_token_layers"], c["mean_layers"], c["risk_points"]))
    assert entry["default"] in (best["spec"], "none+" + best["skim"] if best["skim"] else "none")
    assert "+skim:1," in entry["default"], "on this random model skimming saves tokens within the loose delta"
    check = entry["check"]
    assert check is not None and check["questions"] == entry["check_questions"] > 0
    assert check["risk_points"] >= 0 and check["mean_token_layers"] < check["full_depth_token_layers"]
    assert f"check: risk {check['risk_points']:.3f}" in out
    with Runtime.open(bundle) as rt:
        assert rt.policy.spec == entry["default"] and rt.policy.skim_stages
    for bad, msg in [(["--skim-layers", "1"], "both"), (["--skim-layers", "3", "--skim-thresholds", "0.1"], "layers after"),
                     (["--skim-layers", "x", "--skim-thresholds", "0.1"], "skim grid")]:
        assert main(args[:12] + ["--overwrite"] + bad) == 2, bad
        assert msg in capsys.readouterr().err, bad


def test_none_with_a_skim_grid_certifies_skimming_alone(bundle, tmp_path, capsys):
    from elma.cli import main

    data = tmp_path / "field.json"
    data.write_text(json.dumps(payload(articles=12, labels=False)))
    args = ["calibrate", str(bundle), "--data", str(data), "--risk", "consistency", "--delta", "80", "--epsilon", "0.2",
            "--policies", "none", "--skim-layers", "1,2", "--skim-thresholds", "0.05", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("none "))
    assert "/3 passed)" in line, "none on each of the three records"
    assert line.split()[1] in ("none", "none+skim:1,0.05", "none+skim:2,0.05")
    default = out.strip().splitlines()[-1]
    assert default.startswith("default policy: none+skim:") or default.startswith("default policy: none;")
    assert "mean layers  3.00" in line, "skimming alone runs every layer"
