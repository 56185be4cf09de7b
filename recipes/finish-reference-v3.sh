#!/bin/bash
# After the v3 run (recipes/reference-v3c-run.sh; ELMA_V3_NAME=v3b names the run of sessions 3-4, lost with its
# machine) has written both phases: apply the phase rule, then ship the chosen model with recipes/ship-reference-v3.sh. One command for the whole tail, so that it can follow the
# training run unattended on a machine that is quiet once training ends:
#
#     nohup sh -c '~/.cache/elma/v3c-run.sh && recipes/finish-reference-v3.sh' >> ~/.cache/elma/v3-finish.log 2>&1 &
#
# Exit status: that of the ship recipe (1: the shipping rule does not hold, v2 stays); 2 when a phase is missing or
# the phase rule cannot be read.
set -uo pipefail
cd "$(dirname "$0")/.."
C=${ELMA_V3_RUNS:-$HOME/.cache/elma}
P1=$C/${ELMA_V3_NAME:-v3c}-phase1
P2=$C/${ELMA_V3_NAME:-v3c}-phase2
for p in "$P1" "$P2"; do
    if [ ! -f "$p/model.safetensors" ] || [ ! -f "$p/eval_results.json" ]; then
        echo "finish-reference-v3: $p has no finished model (model.safetensors and eval_results.json): training is not done" >&2
        exit 2
    fi
done
.venv/bin/python benchmarks/exit_table.py "$P2/eval_results.json" --phase-rule "$P1/eval_results.json" \
    | tee "$C/phase-rule.txt"
case ${PIPESTATUS[0]} in
    0) CAND=$P2 ;;
    1) CAND=$P1 ;;
    *) echo "finish-reference-v3: the phase rule could not be applied" >&2; exit 2 ;;
esac
echo "candidate: $CAND"
exec recipes/ship-reference-v3.sh "$CAND"
