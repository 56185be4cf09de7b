#!/bin/bash
# Reference model v3, second recipe (session 3, after the diagnostic short runs E and G): two phases from the
# step-2,100 snapshot of the first run (trained on the train side only).
#   phase 1: exit weights linear, no self-distillation (distillation from an untrained last exit held it back)
#   phase 2: uniform weights + self-distillation 0.5 at T 2 from phase 1's trained last exit
# Same command to start and to resume: each phase adds --resume when its checkpoint exists; phase 2 starts once
# phase 1 has written its model. Runs from a frozen checkout so that edits to the repository do not reach it.
CODE=${ELMA_V3_CODE:-/work/wt/v3b}
cd "$CODE"
export PYTHONPATH=$CODE
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -e "$TCMALLOC" ]; then export LD_PRELOAD=$TCMALLOC; else export MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=1048576; fi
D=$HOME/.cache/elma/data-v3
C=$HOME/.cache/elma
COMMON="--train-file $D/train.json --eval-file $D/heldout-short.json --batch-size 32 --bf16 --threads 2 --save-every 100 --log-every 20"
phase() { out=$1; shift; [ -f "$out/model.safetensors" ] && return 0
  resume=""; [ -f "$out/checkpoint.pt" ] && resume="--resume"
  .venv/bin/python -m elma.cli -v train "$@" -o "$out" $COMMON $resume; }
set -e
phase $C/v3b-phase1 $C/v3-step2100 --epochs 2 --learning-rate 1e-4 --warmup-ratio 0.02 --seed 16 --exit-weights linear
phase $C/v3b-phase2 $C/v3b-phase1 --epochs 1 --learning-rate 5e-5 --warmup-ratio 0.02 --seed 17 \
    --exit-weights uniform --distill-rate 0.5 --temperature 2
