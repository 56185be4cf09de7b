"""Smoke test of benchmarks/skim_tokens.py on a tiny bundle: threshold 0 changes nothing, a skim stage cuts the
token-layers, the fused graph gives the full-depth F1, and bad specs are usage errors."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import skim_tokens  # noqa: E402


def test_token_layers_f1_and_latency_per_spec(tiny_bundles, tiny_squad, capsys):
    bundle = str(tiny_bundles.bundle("bert"))
    specs = ["none+skim:1,0", "none+skim:1,0.03", "static:2+skim:1,0.03"]
    argv = [bundle, "--data", str(tiny_squad), "--limit", "6", "--warmup", "1"]
    assert skim_tokens.main(argv + [a for s in specs for a in ("--policy", s)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["policy"]: r for r in out["policies"]}
    assert list(rows) == ["none", *specs] and out["questions"] == 6
    full, zero, skim, static = (rows[s] for s in ["none", *specs])
    assert zero["mean_token_layers"] == full["mean_token_layers"] and zero["f1"] == full["f1"]
    assert skim["token_layers_vs_full"] > 1 and skim["mean_exit_layer"] == 3
    assert skim["mean_tokens_per_layer"] < full["mean_tokens_per_layer"]
    assert static["mean_exit_layer"] == 2 and static["mean_token_layers"] < skim["mean_token_layers"]
    assert out["fused"]["f1"] == pytest.approx(full["f1"])
    assert skim["speedup_vs_fused"] == pytest.approx(out["fused"]["mean_ms"] / skim["mean_ms"])


@pytest.mark.parametrize("spec, match", [("none+skim:2", "skim:LAYER,THRESHOLD"),
                                         ("none+skim:3,0.1", "leaves no layer")])
def test_bad_specs_are_usage_errors(tiny_bundles, tiny_squad, capsys, spec, match):
    with pytest.raises(SystemExit) as err:
        skim_tokens.main([str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--policy", spec])
    assert err.value.code == 2 and match in capsys.readouterr().err


def test_questions_worse_than_full_depth():
    full = {"a": 1.0, "b": 0.5, "c": 0.0}
    assert skim_tokens.worse_than_full(full, dict(full)) == {"questions_worse": 0, "mean_f1_drop_where_worse": 0.0}
    got = skim_tokens.worse_than_full(full, {"a": 0.0, "b": 0.25, "c": 1.0})  # c got better: not counted
    assert got == {"questions_worse": 2, "mean_f1_drop_where_worse": pytest.approx(62.5)}


def test_short_and_long_contexts_split_the_file(tiny_bundles, tiny_squad, capsys):
    """The tiny file's first windows hold 26, 30 or 31 tokens: 30 splits it into 8 short and 16 long questions."""
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--policy", "none+skim:1,0", "--warmup", "0",
            "--no-fused"]
    counts = {}
    for name, extra in {"all": [], "long": ["--min-tokens", "30"], "short": ["--max-tokens", "30"]}.items():
        assert skim_tokens.main(argv + extra) == 0
        out = json.loads(capsys.readouterr().out)
        counts[name] = out["questions"]
    assert counts == {"all": 24, "long": 16, "short": 8}
    assert out["max_tokens"] == 30 and out["min_tokens"] == 0
    with pytest.raises(SystemExit) as err:
        skim_tokens.main(argv + ["--max-tokens", "20"])
    assert err.value.code == 2 and "no question" in capsys.readouterr().err


def test_max_tokens_must_be_above_min_tokens(tiny_bundles, tiny_squad, capsys):
    with pytest.raises(SystemExit) as err:
        skim_tokens.main([str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--policy", "none",
                          "--min-tokens", "50", "--max-tokens", "50"])
    assert err.value.code == 2 and "must be above" in capsys.readouterr().err


def test_write_subset_keeps_the_selected_questions_as_a_squad_file(tiny_bundles, tiny_squad, tmp_path, capsys):
    """The 16 long questions of the tiny file, written for elma-bench, and nothing timed; an existing file refused."""
    from elma.data.squad import load_squad

    target = tmp_path / "long.json"
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(tiny_squad), "--policy", "none", "--min-tokens", "30",
            "--write-subset", str(target)]
    assert skim_tokens.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote 16 questions to {target}"
    kept = load_squad(target)
    assert len(kept) == 16 and {e.qid for e in kept} < {e.qid for e in load_squad(tiny_squad)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.json", tiny_squad.name], "no temporary file left"
    before = target.read_bytes()
    with pytest.raises(SystemExit) as err:
        skim_tokens.main(argv)
    assert err.value.code == 2 and "already there" in capsys.readouterr().err and target.read_bytes() == before
