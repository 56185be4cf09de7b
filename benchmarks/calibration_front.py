"""What each certificate gives on one calibration file, and the best any certificate could give there.

``elma calibrate`` records the file and certifies one risk with one p-value. This records it once (every skim
setting of the grid too) and then, offline on the same recordings and the same split, certifies it under every
risk and bound (``f1``/``f1-mean`` x ``hb``/``wsr``), and lists the *uncertified* front of the test part: per F1
bound, the setting with the fewest mean layers and the one with the fewest token-layers whose mean F1 there is
within the bound of full depth; and each skim setting alone (every layer run). The front is what a perfect
certificate on these questions could reach: when it holds no setting fast enough, no calibration makes the model so.

Calibration files only (training-side articles), never dev:

    python benchmarks/calibration_front.py B32 --data heldout.json --skim-layers 3 --skim-thresholds 0.001,0.01 \
        --out R.json [--cache RECORDINGS.pkl]

``--cache`` keeps the recordings (a pickle of ``elma.runtime.calibrate.Recordings``; about 17 minutes on 2 cores for
9,899 questions and 3 passes): a rerun with the same path reads them back instead of recording.
"""

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POLICIES = ("entropy", "maxprob", "patience", "similarity", "static", "none")
COMBINATIONS = (("f1", "hb"), ("f1", "wsr"), ("f1-mean", "hb"), ("f1-mean", "wsr"))


def record(bundle: str, data: str, skims, cache):
    from elma.data.squad import load_squad
    from elma.fsutil import atomic_write
    from elma.runtime.calibrate import record_all
    from elma.runtime.engine import Runtime

    if cache and Path(cache).is_file():
        with open(cache, "rb") as f:
            return pickle.load(f)
    examples = load_squad(Path(data), check_offsets=False, labels=False)
    with Runtime.open(bundle, policy="none") as rt:
        recordings = record_all(rt, examples, skims)
    if cache:
        def dump(tmp: str) -> None:
            with open(tmp, "wb") as f:
                pickle.dump(recordings, f)

        atomic_write(cache, dump)
    return recordings


def front(recordings, split, bounds_points):
    """Per F1 bound: the fewest-layers and the fewest-token-layers setting within it on the test part."""
    from elma.bench import sweep as sw
    from elma.runtime.calibrate import subset
    from elma.runtime.certify import _grid
    from elma.runtime.policies import NoExitPolicy

    t = split.test
    full = sw.simulate(recordings.full, NoExitPolicy()).f1
    full_tl = float(sw.token_layers(recordings.full, np.full(recordings.num_windows, recordings.num_layers))[t].mean())
    rows = []
    for rec in recordings.records.values():
        learn = subset(rec, split.learn)
        for name in POLICIES:
            for policy in _grid(learn, name):
                sim = sw.simulate(rec, policy)
                drop = full - sim.f1
                rows.append({"spec": sw.spec_on(rec, policy), "f1_drop_points": float(100 * drop[t].mean()),
                             "f1_drop_sd_points": float(100 * drop[t].std()),
                             "mean_layers": float(sim.exit_layer[t].mean()),
                             "token_layers_fewer": full_tl / float(sw.token_layers(rec, sim.window_layer)[t].mean())})
    out = []
    for bound in bounds_points:
        ok = [r for r in rows if r["f1_drop_points"] <= bound]
        out.append({"f1_within_points": bound, "fewest_layers": min(ok, key=lambda r: r["mean_layers"]),
                    "fewest_token_layers": max(ok, key=lambda r: r["token_layers_fewer"])})
    alone = [r for r in rows if r["spec"].startswith("none")]  # full depth, and each skim setting alone
    return out, alone, len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--data", required=True, help="labelled calibration file (training-side articles, never dev)")
    ap.add_argument("--skim-layers", default="")
    ap.add_argument("--skim-thresholds", default="")
    ap.add_argument("--delta", type=float, default=1.0, help="F1 points (default 1)")
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--out", help="JSON report (refused if it exists)")
    ap.add_argument("--cache", help="pickle of the recordings: read when present, else written")
    args = ap.parse_args(argv)
    if args.out and Path(args.out).exists():
        print(f"calibration_front: {args.out} exists; remove it or choose another --out", file=sys.stderr)
        return 2

    from elma.fsutil import write_json
    from elma.runtime.calibrate import skim_grid
    from elma.runtime.certify import certify, choose_default, split_questions

    skims = skim_grid([int(x) for x in args.skim_layers.split(",") if x],
                      [float(x) for x in args.skim_thresholds.split(",") if x])
    recordings = record(args.bundle, args.data, skims, args.cache)
    split = split_questions(recordings.examples)
    cost = "token-layers" if len(recordings.records) > 1 else "layers"
    report = {"data": Path(args.data).name, "questions": len(recordings.examples), "test_questions": int(split.test.size),
              "skim_grid": [k for k in recordings.records if k], "delta_points": args.delta, "epsilon": args.epsilon,
              "certificates": []}
    for risk, bound in COMBINATIONS:
        certs, _, _ = certify(recordings, split, risk, args.delta, args.epsilon, POLICIES, bound=bound)
        default = choose_default(certs, None, recordings.num_layers, cost)
        chosen = next((c for c in certs.values() if c.spec == default), None)  # "none": the none policy's
        entry = {"risk": risk, "bound": bound, "default": default,
                 "mean_layers": None if chosen is None else chosen.mean_layers,
                 "risk_points": None if chosen is None else chosen.risk_points,
                 "check_risk_points": None if chosen is None or chosen.check is None else chosen.check.risk_points}
        report["certificates"].append(entry)
        print(f"{risk:8s} {bound:4s} default {default:34s} mean layers {entry['mean_layers'] or float('nan'):5.2f}  "
              f"risk {entry['risk_points'] if entry['risk_points'] is not None else float('nan'):6.3f}  "
              f"check {entry['check_risk_points'] if entry['check_risk_points'] is not None else float('nan'):6.3f}")
    report["front"], report["skimming_alone"], report["settings"] = front(recordings, split, (0.0, 0.5, 1.0, 2.0))
    for r in report["skimming_alone"]:
        print(f"{r['spec']}: F1 drop {r['f1_drop_points']:.2f} (per-question spread {r['f1_drop_sd_points']:.1f}), "
              f"{r['token_layers_fewer']:.2f}x fewer token-layers")
    for f in report["front"]:
        a, b = f["fewest_layers"], f["fewest_token_layers"]
        print(f"uncertified, F1 within {f['f1_within_points']:g}: fewest layers {a['spec']} ({a['mean_layers']:.2f}, "
              f"drop {a['f1_drop_points']:.2f}); fewest token-layers {b['spec']} ({b['token_layers_fewer']:.2f}x, "
              f"drop {b['f1_drop_points']:.2f})")
    if args.out:
        write_json(args.out, report, overwrite=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
