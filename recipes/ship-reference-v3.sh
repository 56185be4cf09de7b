#!/bin/bash
# Ship reference model v3 (docs/reference-model-v3.md): the shipping rule first, then the fp16 folder in models/,
# its bundles, the calibration with a guarantee stored in the folder, and the figures for the model card and the
# README front table. Usage, from the repository root, with the training run finished or paused:
#
#     recipes/ship-reference-v3.sh CANDIDATE_MODEL_FOLDER
#
# Every step skips when its output is there, so a rerun after an interruption goes on where it stopped. Work files
# go to $ELMA_SHIP_DIR (default ~/.cache/elma/ship-v3); figures to benchmarks/results/. Stops (exit 1) when the
# shipping rule does not hold: v2 then stays in models/.
set -euo pipefail
CAND=${1:?usage: recipes/ship-reference-v3.sh CANDIDATE_MODEL_FOLDER}
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
D=${ELMA_V3_DATA:-$HOME/.cache/elma/data-v3}            # elma prepare-data output (docs/reference-model-v3.md)
DEV=${ELMA_DEV:-../shared/data/squad2/dev.json}          # reporting only: nothing below is chosen on it
W=${ELMA_SHIP_DIR:-$HOME/.cache/elma/ship-v3}
BENCH_LIMIT=${ELMA_BENCH_LIMIT:-1000}                    # dev questions timed by elma-bench
R=benchmarks/results
SHIPPED=models/elma-minilm-l6-squad2
mkdir -p "$W"
todo() { if [ -e "$1" ]; then echo "== have $1"; return 1; fi; echo "== $2"; }

# 1. The shipping rule, on the whole held-out side (29 articles; v2 trained on 28 of them). The per-exit scores are
#    small and go to benchmarks/results/, so that a new machine does not recompute v2's. (--overwrite: the
#    predictions are this recipe's work files, left behind when a step was interrupted; todo guards the scores.)
V2X=$R/reference-v2-heldout-exits.json
V3X=$R/reference-v3-heldout-exits.json
if todo "$V2X" "v2 on the held-out side"; then
    git diff --quiet HEAD -- $SHIPPED || { echo "$SHIPPED differs from git HEAD: not v2 any more" >&2; exit 2; }
    elma predict $SHIPPED "$D/heldout.json" --overwrite -o "$W/v2-heldout-pred.json" --all-exits-out "$V2X"
fi
if todo "$V3X" "the candidate on the held-out side"; then
    elma predict "$CAND" "$D/heldout.json" --overwrite -o "$W/v3-heldout-pred.json" --all-exits-out "$V3X"
fi
python benchmarks/exit_table.py "$V3X" --against "$V2X" | tee "$R/shipping-rule-v3.txt"

# 2. The fp16 folder replaces v2's weights (the model card, README.md, is rewritten by hand from the figures).
if todo "$W/model-fp16" "fp16 copy of the candidate"; then elma convert "$CAND" -o "$W/model-fp16" --dtype float16; fi
if ! cmp -s "$W/model-fp16/model.safetensors" $SHIPPED/model.safetensors; then
    cp "$W/model-fp16/config.json" "$W/model-fp16/model.safetensors" "$W/model-fp16/tokenizer.json" $SHIPPED/
fi

# 3. The fp32 bundle, calibrated on the held-out side (exit and skim settings, one guarantee), default stored in
#    the folder; then the int8 bundle, exported after, so that its manifest carries the same default.
if todo "$W/B32" "fp32 bundle"; then elma export $SHIPPED -o "$W/B32" --precision fp32; fi
if todo "$R/calibration-v3.txt" "calibration (risk f1, delta 1, epsilon 0.1)"; then
    # --overwrite: a default the folder or bundle holds is for other weights or another calibration; this replaces it
    elma -v calibrate "$W/B32" --data "$D/heldout.json" --risk f1 --delta 1 --epsilon 0.1 \
        --skim-layers 2,3 --skim-thresholds 0.001,0.01 --policies entropy,maxprob,patience,similarity,static,none \
        --model-dir $SHIPPED --overwrite > "$W/calibration.tmp"
    mv "$W/calibration.tmp" "$R/calibration-v3.txt"
fi
if todo "$W/B8" "int8 bundle"; then elma export $SHIPPED -o "$W/B8" --precision int8; fi

# 4. Figures: the per-exit table on the dev half (model card), and the side-by-side benchmark on dev questions
#    (articles neither trained nor calibrated on) for the README front table. Time only on a quiet machine.
if todo "$R/reference-v3-dev-exits.json" "per-exit scores on the dev half"; then
    elma predict $SHIPPED "$DEV" --overwrite -o "$W/dev-pred.json" --na-probs-out "$W/dev-na.json" \
        --all-exits-out "$R/reference-v3-dev-exits.json"
fi
python benchmarks/exit_table.py "$R/reference-v3-dev-exits.json"
if todo "$R/bench-v3-dev$BENCH_LIMIT" "elma-bench, interleaved, $BENCH_LIMIT dev questions"; then
    elma-bench "$W/B32" --data "$DEV" --limit "$BENCH_LIMIT" --compare "$W/B8" --torch-model $SHIPPED --sweep \
        --report-dir "$R/bench-v3-dev$BENCH_LIMIT"
fi
# 5. Peak memory of a whole elma-bench run with baselines and sweep on the full dev half (the early-exit issue's
#    1 GB bound; about 45 minutes alone on 2 cores, 88 beside training). Skipped unless ELMA_MEMORY_RUN=1: session 7
#    measured it on phase 1's bundles (same architecture; benchmarks/results/bench-memory-v3p1-dev-full.json).
if [ "${ELMA_MEMORY_RUN:-0}" = 1 ] && todo "$R/bench-memory-v3-dev-full.json" "peak memory, full dev half"; then
    python benchmarks/record_memory.py bench --limits 6078 --out "$R/bench-memory-v3-dev-full.json" -- "$W/B32" \
        --data "$DEV" --compare "$W/B8" --torch-model $SHIPPED --sweep
fi
# 6. Skimming (the skimming issue): every setting of step 3's skim grid alone (every layer, skim stages only), the
#    default, and the default with the most conservative skim stage, against full depth on long dev questions (a
#    first window of 300 tokens or more) and on short ones, where it should pay less. Step 3 certified no skim
#    setting (its loss counts only the questions a setting answers worse), so these are measured, not certified.
#    Time only on a quiet machine.
DEFAULT=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["exit_thresholds"]["default"])' "$W/B32/manifest.json")
SKIMS=()
for k in 2 3; do for t in 0.001 0.01; do SKIMS+=(--policy "none+skim:$k,$t"); done; done
for side in long short; do
    if todo "$R/skim-v3-dev-$side.json" "skimming on $side dev questions, interleaved"; then
        if [ $side = long ]; then range=(--min-tokens 300); else range=(--max-tokens 300); fi
        python benchmarks/skim_tokens.py "$W/B32" --data "$DEV" "${SKIMS[@]}" --policy "$DEFAULT" \
            --policy "$DEFAULT+skim:3,0.001" "${range[@]}" --limit 500 > "$W/skim-$side.tmp"
        mv "$W/skim-$side.tmp" "$R/skim-v3-dev-$side.json"
    fi
done
# 7. Exit and skim together on the long dev questions, both bundles, against the fused fp32 graph (elma-bench).
if todo "$R/bench-v3-dev-long-exit-skim" "elma-bench, exit and skim, long dev questions"; then
    python benchmarks/skim_tokens.py "$W/B32" --data "$DEV" --policy none --min-tokens 300 --limit 100000 \
        --write-subset "$W/dev-long.json" > /dev/null
    elma-bench "$W/B32" --data "$W/dev-long.json" --policy "$DEFAULT+skim:3,0.001" --compare "$W/B8" \
        --report-dir "$R/bench-v3-dev-long-exit-skim"
fi
# 8. Do the stored null thresholds carry over to real unanswerable questions? Spectre's real held-out questions
#    (never dev), v2 (from git) and v3.
if todo "$R/null-threshold-transfer-spectre-v3.json" "null thresholds on Spectre's real questions"; then
    mkdir -p "$W/v2"
    for f in config.json model.safetensors tokenizer.json; do git show "c452392:$SHIPPED/$f" > "$W/v2/$f"; done
    for m in v2 v3; do
        if [ $m = v2 ]; then folder="$W/v2"; else folder=$SHIPPED; fi
        python benchmarks/null_threshold_transfer.py "$folder" --real "$D/heldout.json" --title "Spectre_(2015_film)" \
            --real-only --out "$R/null-threshold-transfer-spectre-$m.json"
    done
fi
echo "done: write the model card ($SHIPPED/README.md) and the README front table from $R/bench-v3-dev$BENCH_LIMIT"
