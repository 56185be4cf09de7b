"""elma-bench with skimming on a tiny bundle: every row reports token-layers (tokens times layers run), the chosen
skimming policy beside the same exits without skimming, and a sweep over skim settings whose front, timed for real
(--measure-front), has the F1 the simulation gave, with an F1-vs-token-layers plot."""

import importlib.util
import json

import pytest

pytest.importorskip("onnxruntime")

from conftest import squad_payload  # noqa: E402

from elma.bench.cli import main  # noqa: E402
from elma.runtime.engine import Runtime  # noqa: E402

POLICY = "entropy:0.8,0.8+skim:1,0.03"
SKIM = "skim:1,0.03"


@pytest.fixture(scope="module")
def run(tiny_bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("skim-run")
    data = out / "tiny-squad.json"
    data.write_text(json.dumps(squad_payload(copies=2)))
    report_dir = out / "report"
    argv = [str(tiny_bundles.bundle("bert")), "--data", str(data), "--policy", POLICY, "--warmup", "1", "--sweep",
            "--sweep-skim", SKIM, "--measure-front", "--report-dir", str(report_dir), "--no-progress"]
    assert main(argv) == 0
    return tiny_bundles.bundle("bert"), data, report_dir, json.loads((report_dir / "report.json").read_text())


def test_every_row_reports_token_layers(run):
    bundle, data, _, report = run
    from elma.data.squad import load_squad

    examples = load_squad(data)
    with Runtime.open(bundle) as rt:
        lengths = [sum(len(w) for w in rt.windows([(e.question, e.context)])) for e in examples]
        skimmed = [rt.ask(e.question, e.context, policy=POLICY) for e in examples]
    L = report["num_layers"]
    rows = {r["name"]: r for r in [report["result"], *report["baselines"]]}
    full = sum(lengths) * L / len(examples)
    for name in ("per-layer chain, full depth", "fused graph fp32", f"static:{L}"):
        assert rows[name]["mean_token_layers"] == pytest.approx(full), name
    assert rows["static:1"]["mean_token_layers"] == pytest.approx(sum(lengths) / len(examples))
    policy = report["result"]
    assert policy["mean_token_layers"] == pytest.approx(sum(a.token_layers for a in skimmed) / len(examples))
    plain = rows["policy entropy:0.8,0.8 (no skimming)"]
    assert plain["latency_source"] == "simulated" and plain["mean_exit_layer"] == policy["mean_exit_layer"]
    assert policy["mean_token_layers"] < plain["mean_token_layers"], "skimming ran fewer tokens in the same layers"
    assert 0 < policy["mean_tokens_per_layer"] < plain["mean_tokens_per_layer"]


def test_the_sweep_holds_skim_settings_and_their_measured_front_has_the_simulated_f1(run):
    _, _, report_dir, report = run
    points = report["sweep"]
    skimmed = [p for p in points if p["skim"]]
    assert skimmed and all(p["spec"].endswith("+" + SKIM) and p["policy"].endswith("+" + SKIM) for p in skimmed)
    assert {p["policy"] for p in points} >= {"entropy", "entropy+" + SKIM, "static+" + SKIM}
    plain = {p["spec"]: p for p in points if not p["skim"]}
    for p in (p for p in skimmed if p["policy"] == "static+" + SKIM):  # the same grid with and without skimming
        base = plain[p["spec"][: -len("+" + SKIM)]]
        assert p["mean_token_layers"] <= base["mean_token_layers"] and p["mean_layers"] == base["mean_layers"]
    timed = [p for p in points if p["measured_latency_ms"] is not None]
    assert any(p["skim"] for p in timed), "a skimmed setting on the token-layers front was timed"
    for p in timed:
        assert p["measured_f1"] == pytest.approx(p["f1"]), p["spec"]
    assert any(p["pareto_token_layers"] and p["skim"] for p in points)
    md = (report_dir / "report.md").read_text()
    assert "F1 vs mean token-layers" in md and "| token-layers |" in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert (report_dir / "pareto_f1_vs_token_layers.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_skim_needs_a_sweep_and_a_skim_spec(tiny_bundles, tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(squad_payload()))
    base = [str(tiny_bundles.bundle("bert")), "--data", str(data), "--no-progress"]
    assert main(base + ["--sweep-skim", SKIM]) == 2
    assert "add --sweep" in capsys.readouterr().err
    assert main(base + ["--sweep", "--sweep-skim", "skim:1"]) == 2
    assert "--sweep-skim skim:1" in capsys.readouterr().err
