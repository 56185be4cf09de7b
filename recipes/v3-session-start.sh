#!/bin/bash
# Start (or restart) the reference model v3 run at the beginning of a session, on the same machine or a new one:
# one command for what a session used to do by hand. Idempotent: every step skips what is already there.
#   1. the venv (make setup) and tcmalloc (Debian libtcmalloc-minimal4; glibc settings otherwise, see the run recipe)
#   2. the v3 split (docs/reference-model-v3.md) and heldout-short.json, rebuilt when ~/.cache/elma lost them
#   3. the frozen checkout the run executes (/work/wt/v3c), made from HEAD when missing
#   4. the run, chained with the tail (phase rule, then the ship recipe), in the background; each phase resumes
#      from its checkpoint, or from the snapshot committed in runs/reference-v3/ when the checkpoint was lost
# Usage, from the repository root:  recipes/v3-session-start.sh      (log: ~/.cache/elma/v3-finish.log)
set -euo pipefail
cd "$(dirname "$0")/.."
C=$HOME/.cache/elma
D=$C/data-v3
CODE=${ELMA_V3_CODE:-/work/wt/v3c}
if pgrep -f "elma.cli -v train" > /dev/null; then echo "a training run is already going: $(pgrep -af 'elma.cli -v train' | head -1)" >&2; exit 2; fi
make setup
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ ! -e $TCMALLOC ] && command -v apt-get > /dev/null; then
    apt-get install -y -q libtcmalloc-minimal4 > /dev/null 2>&1 || (apt-get update -q > /dev/null && apt-get install -y -q libtcmalloc-minimal4 > /dev/null) || echo "no tcmalloc: the run uses glibc's malloc (slower)"
fi
mkdir -p "$C"
if [ ! -f "$D/split.json" ]; then
    .venv/bin/elma prepare-data ../shared/data/squad2/train.json ../shared/data/squad11/train-v1.1-rebuilt.json \
        ../shared/data/squad2/train-extra-v1.1.json -o "$D" \
        --holdout-from ../shared/data/squad11/train-v1.1-rebuilt.json --holdout-articles 28 \
        --holdout-title "Spectre_(2015_film)" --negative-rate 0.8 --heldout-negative-rate 0.8 \
        --negative-recipes swap,edit --repeat-real-negatives 10 --seed 15 > /dev/null
fi
[ -f "$D/heldout-short.json" ] || .venv/bin/python recipes/heldout-short.py "$D/heldout.json" -o "$D/heldout-short.json"
if [ ! -d "$CODE" ]; then git worktree prune; git worktree add -f "$CODE" HEAD --detach -q; fi
ln -sfn "$PWD/.venv" "$CODE/.venv"
cp recipes/reference-v3c-run.sh "$C/v3c-run.sh"
nohup sh -c "$C/v3c-run.sh && recipes/finish-reference-v3.sh" >> "$C/v3-finish.log" 2>&1 &
echo "started (pid $!); log: $C/v3-finish.log"
