"""The split bandit (``elma.offload.split``) against every fixed split layer, in a simulation over recorded exits.

    # once per data file (runs every layer of every question; CPU-heavy: nice it)
    nice -n 15 python benchmarks/split_bandit_sim.py record --model models/elma-minilm-l6-squad2 \\
        --data heldout-short.json -o exits-heldout.json
    # fix mu and the exploration scale on one recording, then report on another with them
    python benchmarks/split_bandit_sim.py tune exits-heldout.json --costs benchmarks/results/split-costs-loopback.json
    python benchmarks/split_bandit_sim.py simulate exits-dev.json --costs benchmarks/results/split-costs-loopback.json \\
        --mu MU --exploration C -o results.json [--markdown results.md]

Figures and how mu and the exploration were fixed: docs/offload-split.md.

**What is recorded** (``record``): the device runtime (the model's cached ONNX bundle, its calibrated default exit
policy) runs every layer of every question once (``Runtime.record_exits``); the policy is then simulated on those
logits exactly as the runtime runs it (``elma.bench.sweep``). Per question: ``exit_layer``, the layer at which
the policy is confident in every window (null when some window never is), the answer's official F1 there and at full
depth, and the exit confidence (smaller of the start and end maximum probability, smallest over the windows, as
``Answer.exit_confidence``) at that exit and at every layer.

**What a split costs** (``SplitCosts``, from ``--costs`` JSON, each figure with its source): answering with ``k``
layers costs ``layer_ms[k-1]`` (the device's end-to-end latency: tokenisation, embeddings, ``k`` layers and their
exit heads, decoding), an offload adds ``offload_ms`` (request, server, reply). A question under split ``s``: exits locally
at its exit layer ``k`` when ``k <= s`` (cost ``layer_ms[k-1]``, F1 local), else runs ``s`` layers and is
offloaded (cost ``layer_ms[s-1] + offload_ms``, the server's full-depth answer and F1); split ``L`` never offloads
(the device already holds the full-depth answer). The bandit sees exactly what the device sees
(``elma.offload.split.observation``), never an F1.

**Reported** (``simulate``): mean cost and F1 of every fixed split over all questions; the best fixed split in
hindsight (the highest mean reward, the bandit's own objective); the bandit after 500, 1,000 and 2,000 questions
(mean and spread over ``--orders`` random question orders, each a fresh bandit); its cumulative regret against the
best fixed split (in reward units, and in ms).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from elma.offload.split import SplitBandit, SplitCosts, observation  # noqa: E402

CHECKPOINTS = (500, 1000, 2000)
MU_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
EXPLORATION_GRID = (0.05, 0.1, 0.25, 0.5, 1.0)


# ---- recording --------------------------------------------------------------------------------------------------

def record(model: str, data: str, limit: Optional[int] = None, seed: int = 0,
           policy: Optional[str] = None) -> Dict[str, object]:
    """Every exit of every question of ``data`` (``limit``: of that many drawn at random with ``seed``, in file order)
    under the model's default policy, or ``policy`` (see the module docstring). ``model``: a model folder (through
    its cached ONNX bundle, as ``elma-ask`` runs it) or a bundle. Recorded one question at a time with the bench's
    compact recorder (``elma.bench.sweep``), whose simulation the tests check against ``Runtime.ask``."""
    import numpy as np

    from elma.bench import sweep
    from elma.data.squad import load_squad
    from elma.runtime.bundle_cache import open_cached
    from elma.runtime.engine import Runtime, is_bundle
    from elma.runtime.policies import NoExitPolicy

    examples = load_squad(Path(data))
    if limit is not None and limit < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
        examples = [examples[i] for i in keep]
    with (Runtime.open(model, policy=policy) if is_bundle(model) else open_cached(Path(model), policy=policy)) as rt:
        rec = sweep.record_exits(rt, examples)
        policy = rt.policy.exit_policy
        L = rt.num_layers
    starts = rec.first_window
    conf_w = rec.stats[:, :, 2]  # (W, L) smaller max probability of start and end, per window and layer
    sim, full = sweep.simulate(rec, policy), sweep.simulate(rec, NoExitPolicy())
    exit_conf = np.minimum.reduceat(conf_w[np.arange(conf_w.shape[0]), sim.window_layer - 1], starts)  # (Q,)
    per_layer = np.minimum.reduceat(conf_w, starts, axis=0)  # (Q, L) smallest over the windows
    questions: List[Dict[str, object]] = []
    for qi, ex in enumerate(examples):
        confident = not bool(sim.unsolved[qi])
        questions.append({
            "qid": ex.qid,
            "windows": int((starts[qi + 1] if qi + 1 < len(starts) else conf_w.shape[0]) - starts[qi]),
            "exit_layer": int(sim.exit_layer[qi]) if confident else None,
            "exit_confidence": float(exit_conf[qi]) if confident else None,
            "confidence": [float(v) for v in per_layer[qi]],
            "f1_local": float(sim.f1[qi]) if confident else None,
            "f1_full": float(full.f1[qi]),
        })
    return {"model": model, "data": data, "limit": limit, "seed": seed, "policy": policy.spec, "num_layers": L,
            "questions": questions}


# ---- simulation -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """One question under one split: what the device sees, what it costs, how good the answer is."""

    layers_run: int
    offloaded: bool
    local_exit: Optional[int]  # the exit layer when answered locally (confident, or full depth at split L)
    confidence: Optional[float]  # exit confidence there
    cost_ms: float
    f1: float  # 0-1


def outcome(q: Dict[str, object], split: int, num_layers: int, costs: SplitCosts) -> Outcome:
    k = q["exit_layer"]
    if k is not None and k <= split:
        return Outcome(k, False, k, q["exit_confidence"], costs.local_ms(k), q["f1_local"])
    if split == num_layers:  # unconfident at the last layer: the device holds the full-depth answer
        return Outcome(split, False, split, q["confidence"][split - 1], costs.local_ms(split), q["f1_full"])
    return Outcome(split, True, None, None, costs.local_ms(split) + costs.offload_ms, q["f1_full"])


def seen(q: Dict[str, object], split: int, num_layers: int) -> Dict[int, object]:
    """What the device observes after playing ``split`` on ``q`` (as ``elma-ask`` builds it from an Answer)."""
    o = outcome(q, split, num_layers, SplitCosts((0.0,) * num_layers, 0.0))
    return observation(split, num_layers, o.layers_run, o.local_exit, o.confidence)


@dataclass(frozen=True)
class FixedSplit:
    split: int
    cost_ms: float  # mean over the questions
    f1: float  # mean official per-question F1, 0-100
    offload_rate: float
    mean_reward: float


@dataclass(frozen=True)
class BanditPoint:
    questions: int
    cost_ms_mean: float  # mean over orders of the mean cost of the first ``questions`` questions
    cost_ms_min: float
    cost_ms_max: float
    f1_mean: float
    f1_min: float
    f1_max: float
    cost_vs_best: float  # cost_ms_mean / the best fixed split's mean cost on the same questions (mean over orders)
    f1_best_fixed: float  # the best fixed split's F1 on the same questions (mean over orders)
    regret_reward_mean: float  # cumulative (best fixed split's reward - bandit's reward), summed over questions
    regret_ms_mean: float  # cumulative (bandit's cost - best fixed split's cost)
    best_arm_share: float  # share of the last 100 questions played at the best fixed split


def fixed_splits(questions: Sequence[Dict[str, object]], num_layers: int, costs: SplitCosts,
                 mu: float) -> List[FixedSplit]:
    out = []
    for s in range(1, num_layers + 1):
        rows = [outcome(q, s, num_layers, costs) for q in questions]
        rewards = [costs.reward(o.layers_run, o.offloaded, o.confidence, mu) for o in rows]
        n = len(rows)
        out.append(FixedSplit(s, sum(o.cost_ms for o in rows) / n, 100.0 * sum(o.f1 for o in rows) / n,
                              sum(o.offloaded for o in rows) / n, sum(rewards) / n))
    return out


def run_bandit(questions: Sequence[Dict[str, object]], num_layers: int, costs: SplitCosts, mu: float,
               exploration: float, best: int):
    """One pass of a fresh bandit over ``questions``: per question (split played, cost, F1, regret in reward)."""
    bandit = SplitBandit(num_layers, mu=mu, exploration=exploration, costs=costs)
    plays = []
    for q in questions:
        s = bandit.choose()
        o = outcome(q, s, num_layers, costs)
        ob = outcome(q, best, num_layers, costs)
        bandit.update(s, seen(q, s, num_layers))
        regret = (costs.reward(ob.layers_run, ob.offloaded, ob.confidence, mu)
                  - costs.reward(o.layers_run, o.offloaded, o.confidence, mu))
        plays.append((s, o.cost_ms, o.f1, regret, ob.cost_ms, ob.f1))
    return plays


def evaluate(rec: Dict[str, object], costs: SplitCosts, mu: float, exploration: float, orders: int = 20,
             seed: int = 0, checkpoints: Sequence[int] = CHECKPOINTS) -> Dict[str, object]:
    questions = rec["questions"]
    L = int(rec["num_layers"])
    fixed = fixed_splits(questions, L, costs, mu)
    best = max(fixed, key=lambda f: f.mean_reward)
    horizon = max(checkpoints)
    rng = random.Random(seed)
    runs = []
    for _ in range(orders):
        order = list(questions)
        rng.shuffle(order)
        while len(order) < horizon:  # a recording shorter than the horizon is replayed in new shuffles
            more = list(questions)
            rng.shuffle(more)
            order += more
        runs.append(run_bandit(order[:horizon], L, costs, mu, exploration, best.split))
    points = []
    for n in checkpoints:
        cost = [sum(p[1] for p in r[:n]) / n for r in runs]
        f1 = [100.0 * sum(p[2] for p in r[:n]) / n for r in runs]
        best_cost = [sum(p[4] for p in r[:n]) / n for r in runs]
        best_f1 = [100.0 * sum(p[5] for p in r[:n]) / n for r in runs]
        regret = [sum(p[3] for p in r[:n]) for r in runs]
        regret_ms = [sum(p[1] - p[4] for p in r[:n]) for r in runs]
        share = [sum(p[0] == best.split for p in r[max(0, n - 100):n]) / min(100, n) for r in runs]
        points.append(BanditPoint(n, _mean(cost), min(cost), max(cost), _mean(f1), min(f1), max(f1),
                                  _mean(cost) / _mean(best_cost), _mean(best_f1), _mean(regret), _mean(regret_ms),
                                  _mean(share)))
    return {"questions": len(questions), "num_layers": L, "policy": rec["policy"], "mu": mu,
            "exploration": exploration, "orders": orders, "seed": seed, "costs": asdict(costs),
            "fixed": [asdict(f) for f in fixed], "best_fixed": asdict(best), "bandit": [asdict(p) for p in points]}


def tune(rec: Dict[str, object], costs: SplitCosts, max_f1_drop: float = 1.0, orders: int = 10,
         mus: Sequence[float] = MU_GRID, explorations: Sequence[float] = EXPLORATION_GRID) -> Dict[str, object]:
    """Fix mu and the exploration scale on a tuning recording (never the one reported on).

    mu: the largest in ``mus`` whose best fixed split keeps the F1 within ``max_f1_drop`` points of full depth on
    every question (offloading everything unsolved at layer 1 gives the full-depth F1 but the most cost; a larger mu
    weighs cost more). Exploration: the one whose bandit has the smallest mean cost ratio to that best split after
    2,000 questions, among those with an F1 no lower than it; ties go to the larger (safer) exploration.
    """
    questions = rec["questions"]
    L = int(rec["num_layers"])
    full_f1 = 100.0 * sum(q["f1_full"] for q in questions) / len(questions)
    table = []
    chosen_mu = None
    for mu in sorted(mus):
        fixed = fixed_splits(questions, L, costs, mu)
        best = max(fixed, key=lambda f: f.mean_reward)
        ok = best.f1 >= full_f1 - max_f1_drop
        table.append({"mu": mu, "best_split": best.split, "best_cost_ms": best.cost_ms, "best_f1": best.f1, "ok": ok})
        if ok:
            chosen_mu = mu
    if chosen_mu is None:
        chosen_mu = min(mus)
    runs = []
    for c in explorations:
        r = evaluate(rec, costs, chosen_mu, c, orders=orders, seed=1)
        last = r["bandit"][-1]
        runs.append({"exploration": c, "cost_vs_best": last["cost_vs_best"], "f1": last["f1_mean"],
                     "f1_best_fixed": last["f1_best_fixed"]})
    fine = [r for r in runs if r["f1"] >= r["f1_best_fixed"] - 0.1] or runs
    chosen_c = min(fine, key=lambda r: (round(r["cost_vs_best"], 3), -r["exploration"]))["exploration"]
    return {"data": rec["data"], "full_depth_f1": full_f1, "max_f1_drop": max_f1_drop, "mu_table": table,
            "mu": chosen_mu, "exploration_table": runs, "exploration": chosen_c}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def markdown(result: Dict[str, object], cost_sources: Dict[str, str]) -> str:
    best = result["best_fixed"]
    lines = [f"# Split bandit vs fixed splits ({result['questions']} questions, policy `{result['policy']}`)", "",
             f"mu {result['mu']}, exploration {result['exploration']}, {result['orders']} random question orders.",
             "", "| split | mean cost ms | F1 | offloaded | mean reward |", "|---|---|---|---|---|"]
    for f in result["fixed"]:
        mark = " (best in hindsight)" if f["split"] == best["split"] else ""
        lines.append(f"| {f['split']}{mark} | {f['cost_ms']:.2f} | {f['f1']:.2f} | {100 * f['offload_rate']:.1f}% | "
                     f"{f['mean_reward']:.4f} |")
    lines += ["", "| bandit after | mean cost ms [min, max] | cost / best fixed | F1 [min, max] | best fixed F1 | "
              "regret (reward) | regret ms | last 100 at best |", "|---|---|---|---|---|---|---|---|"]
    for p in result["bandit"]:
        lines.append(f"| {p['questions']} | {p['cost_ms_mean']:.2f} [{p['cost_ms_min']:.2f}, {p['cost_ms_max']:.2f}] | "
                     f"{p['cost_vs_best']:.3f} | {p['f1_mean']:.2f} [{p['f1_min']:.2f}, {p['f1_max']:.2f}] | "
                     f"{p['f1_best_fixed']:.2f} | {p['regret_reward_mean']:.1f} | {p['regret_ms_mean']:.0f} | "
                     f"{100 * p['best_arm_share']:.0f}% |")
    lines += ["", "Costs: " + "; ".join(f"{k}: {v}" for k, v in cost_sources.items()), ""]
    return "\n".join(lines)


def load_costs(path: str) -> (SplitCosts, Dict[str, str]):
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    return SplitCosts(tuple(float(v) for v in d["layer_ms"]), float(d["offload_ms"])), d.get("sources", {})


def main(argv: Optional[List[str]] = None) -> int:
    from elma.fsutil import Output, check_outputs, write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record every exit of every question")
    r.add_argument("--model", required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--policy", help="exit policy (default: the model's calibrated default)")
    r.add_argument("--limit", type=int, help="record this many questions drawn at random (default: all)")
    r.add_argument("--seed", type=int, default=0, help="of the --limit draw")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--overwrite", action="store_true")
    t = sub.add_parser("tune", help="fix mu and the exploration scale on a tuning recording")
    t.add_argument("recording")
    t.add_argument("--costs", required=True)
    t.add_argument("--orders", type=int, default=10)
    s = sub.add_parser("simulate", help="fixed splits and the bandit on a recording")
    s.add_argument("recording")
    s.add_argument("--costs", required=True)
    s.add_argument("--mu", type=float, required=True)
    s.add_argument("--exploration", type=float, required=True)
    s.add_argument("--orders", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoints", default="500,1000,2000")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--markdown")
    s.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "record":
        check_outputs([Output(args.output, "-o")], args.overwrite, inputs=[args.data])
        write_json(args.output, record(args.model, args.data, args.limit, args.seed, args.policy), args.overwrite)
        return 0
    rec = json.loads(Path(args.recording).read_text(encoding="utf-8"))
    costs, sources = load_costs(args.costs)
    if len(costs.layer_ms) != rec["num_layers"]:
        print(f"split_bandit_sim: {args.costs} has {len(costs.layer_ms)} layer costs, the recording "
              f"{rec['num_layers']} layers", file=sys.stderr)
        return 2
    if args.cmd == "tune":
        print(json.dumps(tune(rec, costs, orders=args.orders), indent=1))
        return 0
    check_outputs([Output(args.output, "-o"), Output(args.markdown, "--markdown")], args.overwrite,
                  inputs=[args.recording, args.costs])
    checkpoints = tuple(int(c) for c in args.checkpoints.split(","))
    result = evaluate(rec, costs, args.mu, args.exploration, args.orders, args.seed, checkpoints)
    result.update({"recording": args.recording, "cost_sources": sources})
    write_json(args.output, result, args.overwrite)
    if args.markdown:
        from elma.fsutil import atomic_write

        text = markdown(result, sources)
        atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), args.overwrite)
    best, last = result["best_fixed"], result["bandit"][-1]
    print(f"best fixed split {best['split']}: {best['cost_ms']:.2f} ms, F1 {best['f1']:.2f}; bandit after "
          f"{last['questions']}: {last['cost_ms_mean']:.2f} ms ({last['cost_vs_best']:.3f}x), F1 {last['f1_mean']:.2f}")
    return 0


def run(argv=None) -> int:
    """``main`` with an output the user did not ask to replace (or a bad path) as one line and exit 2."""
    from elma.errors import OutputExistsError, UsageError

    try:
        return main(argv)
    except (OutputExistsError, UsageError) as err:  # fsutil.check_outputs, before any work
        print(f"split_bandit_sim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
