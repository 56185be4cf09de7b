#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU and TensorRT (a Jetson or a desktop/server GPU):
#   1. elma doctor: TensorRT, a CUDA binding and the GPU must be there (else exit 3, saying what is missing);
#   2. a bundle: the one given with --bundle (copied, never modified), else the shipped model exported (fp32);
#   3. elma build-engines on it (--fp16 to build fp16 engines);
#   4. benchmarks/gpu_compare.py: tensorrt against onnxruntime (CPU) on --questions questions (full depth and
#      the calibrated policy), and the per-layer chain against fused.plan (batch 1, medians);
# everything written under --out (refused if it exists). Exit 0 when the answers agree, 1 when they do not,
# 2 on bad arguments, 3 when the machine cannot run the check.
#
#   benchmarks/gpu_check.sh [--bundle DIR] [--data dev.json] [--questions 200] [--out DIR] [--fp16] [--repeats N]
#
# PYTHON picks the interpreter (default: .venv/bin/python of the checkout, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
BUNDLE=""
DATA="$ROOT/../shared/data/squad2/dev.json"
QUESTIONS=200
REPEATS=200
OUT="$ROOT/benchmarks/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)"
FP16=()

die() { echo "gpu_check: $2" >&2; exit "$1"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bundle) BUNDLE="${2:?--bundle needs a folder}"; shift 2 ;;
        --data) DATA="${2:?--data needs a file}"; shift 2 ;;
        --questions) QUESTIONS="${2:?--questions needs a number}"; shift 2 ;;
        --repeats) REPEATS="${2:?--repeats needs a number}"; shift 2 ;;
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --fp16) FP16=(--fp16); shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die 2 "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$QUESTIONS" =~ ^[1-9][0-9]*$ ]] || die 2 "--questions must be a positive number (got $QUESTIONS)"
[[ "$REPEATS" =~ ^[0-9]+$ ]] || die 2 "--repeats must be a number (got $REPEATS)"
[[ -f "$DATA" ]] || die 2 "no SQuAD file at $DATA: pass --data dev-v2.0.json"
[[ -e "$OUT" ]] && die 2 "$OUT exists: pass another --out (nothing is replaced)"
[[ -z "$BUNDLE" || -f "$BUNDLE/manifest.json" ]] || die 2 "$BUNDLE is not a bundle (no manifest.json)"

elma() { PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m elma.cli "$@"; }

# 1. the machine: the check needs TensorRT, a CUDA binding and a GPU (elma doctor says which is missing)
doctor_json="$(elma doctor --json || true)"
missing="$(printf '%s' "$doctor_json" | "$PYTHON" -c '
import json, sys
try:
    report = json.load(sys.stdin)
except ValueError:
    print("elma doctor gave no report (is elma importable with this PYTHON?)"); sys.exit(0)
for c in report["checks"]:
    if c["name"] in ("tensorrt", "cuda binding", "gpu") and c["status"] != "OK":
        print("%s %s: %s (fix: %s)" % (c["status"], c["name"], c["detail"], c["fix"]))
')"
[[ -z "$missing" ]] || die 3 "this machine cannot run the TensorRT check:
$missing"

mkdir -p "$OUT"
printf '%s\n' "$doctor_json" > "$OUT/doctor.json"

# 2. the bundle (a copy: build-engines writes into it)
if [[ -n "$BUNDLE" ]]; then
    cp -a "$BUNDLE" "$OUT/bundle"
else
    echo "gpu_check: exporting the shipped model (fp32) to $OUT/bundle" >&2
    elma export -o "$OUT/bundle" --precision fp32 || die 3 "export failed (needs pip install -e '.[export]')"
fi

# 3. engines for this GPU and TensorRT
elma build-engines "$OUT/bundle" "${FP16[@]}" --max-batch 8 | tee "$OUT/build-engines.txt"

# 4. answers against onnxruntime, chain against fused.plan
status=0
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$ROOT/benchmarks/gpu_compare.py" "$OUT/bundle" \
    --data "$DATA" --limit "$QUESTIONS" --repeats "$REPEATS" > "$OUT/compare.json" || status=$?
cat "$OUT/compare.json"
"$PYTHON" - "$OUT/compare.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
for policy, a in r["answers"].items():
    print("answers (%s): %d/%d same text, %d/%d same exit layer" % (policy, a["same_text"], a["questions"],
                                                                   a["same_exit_layer"], a["questions"]))
print("largest last-exit logit difference: %.4g" % r["max_abs_last_exit_logit_diff"])
if "latency" in r:
    l = r["latency"]
    print("per-layer chain %.3f ms vs fused.plan %.3f ms (x%.3f), %d tokens" % (l["chain_ms"], l["fused_ms"],
                                                                              l["chain_over_fused"], l["tokens"]))
PY
echo "gpu_check: results in $OUT" >&2
exit "$status"
