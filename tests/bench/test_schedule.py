"""The interleaved loop: each question answered by every configuration back to back, the order rotating so
that no configuration always goes first; configurations that cannot run are dropped at warm-up with why."""

import pytest

from elma.bench.configs import Configuration, Outcome
from elma.bench.schedule import rotation, run_interleaved, warm_up, williams_orders
from elma.data.squad import Answer, Example

EXAMPLES = [Example(f"q{i}", "t", f"question {i}?", "some context", (Answer("context", 5),) if i % 2 else (), i % 2 == 0)
            for i in range(7)]


class Logged(Configuration):
    """A configuration that records every call in a shared log (which config, which question)."""

    kind = "policy"
    num_layers = 2

    def __init__(self, name, log):
        self.name, self.log = name, log

    def answer(self, ex):
        self.log.append((self.name, ex.qid))
        return Outcome("context" if self.name == "a" else "", 0.2, 2, (2,))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_williams_design_balances_first_place_and_who_follows_whom(n):
    from collections import Counter

    rows = williams_orders(n)
    assert len(rows) == (n if n % 2 == 0 else 2 * n) and all(sorted(r) == list(range(n)) for r in rows)
    firsts = Counter(r[0] for r in rows)
    assert set(firsts) == set(range(n)) and len(set(firsts.values())) == 1
    if n > 1:
        pairs = Counter((a, b) for r in rows for a, b in zip(r, r[1:]))
        assert len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1, "every ordered pair equally often"
    assert [rotation(n, s) for s in range(2 * len(rows))] == rows + rows


@pytest.mark.parametrize("rounds", [1, 2])
def test_every_question_by_every_configuration_back_to_back(rounds):
    log = []
    configs = [Logged(n, log) for n in "abc"]
    sched = run_interleaved(configs, EXAMPLES, rounds=rounds)
    assert len(log) == 3 * len(EXAMPLES) * rounds
    for i in range(0, len(log), 3):  # calls come in blocks of one question, each configuration once
        block = log[i:i + 3]
        assert len({q for _, q in block}) == 1 and sorted(n for n, _ in block) == ["a", "b", "c"]
    firsts = [log[i][0] for i in range(0, len(log), 3)]
    assert set(firsts) == {"a", "b", "c"}, "the first place rotates"
    assert max(firsts.count(n) for n in "abc") - min(firsts.count(n) for n in "abc") <= 1
    assert len(sched.results) == rounds and all(len(r) == 3 for r in sched.results)
    for per_config in sched.results:
        for c, rows in zip("abc", per_config):
            assert [r.qid for r in rows] == [e.qid for e in EXAMPLES], "results in question order, whatever the order"
            assert all(r.prediction == ("context" if c == "a" else "") and r.latency_ms >= 0 for r in rows)
            assert all(r.start_s <= r.end_s for r in rows)


class Unable(Logged):
    def answer(self, ex):
        raise NotImplementedError("the test backend cannot run the fused graph")


def test_warm_up_drops_what_cannot_run_and_counts_nothing():
    log = []
    kept, dropped = warm_up([Logged("a", log), Unable("u", log), Logged("b", log)], EXAMPLES, warmup=2)
    assert [c.name for c in kept] == ["a", "b"]
    assert dropped == [("u", "the test backend cannot run the fused graph")]
    assert log == [("a", "q0"), ("a", "q1"), ("b", "q0"), ("b", "q1")]


def test_fused_row_on_a_backend_without_run_fused_is_dropped_with_its_name(tiny_bundles):
    pytest.importorskip("onnxruntime")
    from elma.bench.configs import FusedConfig, PolicyConfig
    from elma.runtime.backends import Backend, OrtBackend
    from elma.runtime.bundle import load_bundle
    from elma.runtime.engine import Runtime, bundle_info

    class NoFused(OrtBackend):
        name = "nofused"
        run_fused = Backend.run_fused

    bundle = load_bundle(tiny_bundles.bundle("bert"))
    with Runtime(NoFused(bundle), bundle_info(bundle)) as rt:
        kept, dropped = warm_up([PolicyConfig(rt, "none", "chain", "chain"), FusedConfig(rt, "fused graph fp32")],
                                EXAMPLES, warmup=1)
    assert [c.name for c in kept] == ["chain"]
    assert dropped[0][0] == "fused graph fp32" and "nofused backend" in dropped[0][1]


def test_no_configuration_is_refused():
    with pytest.raises(ValueError):
        run_interleaved([], EXAMPLES)


def test_bench_modules_import_without_torch_onnxruntime_or_matplotlib():
    """The device side (Makefile DEVICE_SIDE holds elma/bench) imports no heavy module at load time."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'onnxruntime', 'tensorrt', 'matplotlib', 'tqdm'):\n"
            "    sys.modules[name] = None\n"
            "import elma.bench, elma.bench.runner, elma.bench.configs, elma.bench.schedule, elma.bench.sweep\n"
            "import elma.bench.power, elma.bench.bootstrap, elma.bench.results, elma.bench.report, elma.bench.cli\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _plain(value) -> bool:
    """A str, bool, int, float or None, or a tuple of them: nothing that holds an array."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, bool, int, float)


def test_a_question_keeps_a_few_plain_values_whatever_the_configuration(tiny_bundles, tiny_squad):
    """What the timed pass keeps per question and configuration is its answer text and a few numbers (no logits,
    hidden states or numpy scalars): a full-dev run keeps 6,078 of them per configuration."""
    pytest.importorskip("onnxruntime")
    import dataclasses
    import pickle

    from elma.bench.configs import EveryExitFullDepth, FusedConfig, PolicyConfig, RuntimeFlops, model_dims
    from elma.data.squad import load_squad
    from elma.runtime.engine import Runtime

    examples = load_squad(tiny_squad)[:6]
    with Runtime.open(tiny_bundles.bundle("bert"), policy="entropy:0.5,0.5") as rt:
        flops = RuntimeFlops(rt, model_dims(rt, None, None))
        configs = [PolicyConfig(rt, rt.policy, "policy", "policy", flops), PolicyConfig(rt, "none", "chain", "chain", flops),
                   FusedConfig(rt, "fused", flops=flops), PolicyConfig(rt, EveryExitFullDepth(), "every", "every", flops)]
        sched = run_interleaved(configs, examples)
    rows = [r for per_config in sched.results[0] for r in per_config]
    assert len(rows) == 4 * len(examples)
    for r in rows:
        bad = {f.name: type(getattr(r, f.name)).__name__ for f in dataclasses.fields(r) if not _plain(getattr(r, f.name))}
        assert not bad, f"{r.qid}: fields that are not plain values: {bad}"
        assert len(pickle.dumps(r)) < 600 + len(r.prediction), "a few hundred bytes per question"
