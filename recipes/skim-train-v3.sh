#!/bin/bash
# Training with skimming against inference-only skimming (the skimming issue, point 3), on v3: a short fine-tune of
# v3's phase-2 model with the runtime's token drop after layer 2 (the stage that costs F1 at inference), then both
# models' bundles skimmed on the long questions of the held-out side (a first window of 300 tokens or more; never
# dev), interleaved. Usage, from the repository root, on a quiet machine:  recipes/skim-train-v3.sh
# Outputs: ~/.cache/elma/v3-skim2 (the model), benchmarks/results/skim-train-v3-heldout-long.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
C=$HOME/.cache/elma
D=$C/data-v3
W=$C/ship-v3
OUT=$C/v3-skim2
R=benchmarks/results
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
[ -e "$TCMALLOC" ] && export LD_PRELOAD=$TCMALLOC
if [ ! -f "$OUT/model.safetensors" ]; then
    resume=""; [ -f "$OUT/checkpoint.pt" ] && resume="--resume"
    elma -v train "$C/v3c-phase2" --train-file "$D/train.json" --eval-file "$D/heldout-short.json" -o "$OUT" \
        --skim skim:2,0.01 --max-steps 300 --learning-rate 2e-5 --warmup-ratio 0.05 --seed 18 --exit-weights uniform \
        --distill-rate 0.5 --temperature 2 --batch-size 32 --bf16 --threads 2 --save-every 50 --log-every 10 $resume
fi
[ -d "$W/B32-skim2" ] || elma export "$OUT" -o "$W/B32-skim2" --precision fp32
[ -f "$W/heldout-long.json" ] || python benchmarks/skim_tokens.py "$W/B32" --data "$D/heldout.json" --policy none \
    --min-tokens 300 --limit 100000 --write-subset "$W/heldout-long.json"
for m in B32 B32-skim2; do
    [ -f "$W/skim-train-$m.json" ] && continue
    python benchmarks/skim_tokens.py "$W/$m" --data "$W/heldout-long.json" --policy none+skim:2,0.01 \
        --policy none+skim:2,0.001 --policy none+skim:3,0.001 --limit 400 --no-fused > "$W/skim-train-$m.tmp"
    mv "$W/skim-train-$m.tmp" "$W/skim-train-$m.json"
done
python - "$W/skim-train-B32.json" "$W/skim-train-B32-skim2.json" "$R/skim-train-v3-heldout-long.json" <<'PY'
import json, sys
inference, trained = (json.load(open(p)) for p in sys.argv[1:3])
json.dump({"inference_only": inference, "trained_with_skim": trained}, open(sys.argv[3], "w"), indent=1)
for name, d in (("v3 (inference-only skimming)", inference), ("v3 + 300 steps --skim skim:2,0.01", trained)):
    for p in d["policies"]:
        print(f"{name:36s} {p['policy']:20s} token-layers {p['token_layers_vs_full']:.2f}x  F1 {p['f1']:.2f} "
              f"({p['f1_delta_vs_full']:+.2f} vs its full depth)  worse {p['questions_worse']}")
PY
