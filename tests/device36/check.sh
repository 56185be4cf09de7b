#!/usr/bin/env bash
# The device side on a real Python 3.6 (JetPack 4.6, the TX2), against this machine's Python, answer for answer.
#
#   tests/device36/check.sh PY36 ELMA311
#
# PY36: a Python 3.6 interpreter (pyenv's 3.6.15 where there is one); ELMA311: the `bin` folder of the project's
# main venv. It installs the package into .venv36 with the packages a TX2 gets on Python 3.6 (tokenizers 0.12,
# numpy 1.19, the dataclasses backport, onnxruntime 1.10 standing in for NVIDIA's onnxruntime-gpu 1.10 wheel,
# PyNaCl 1.5), exports the shipped model at opset 13 (what TensorRT 8.2 parses), then checks that on 3.6
#   - elma-bench gives the same predictions as on this Python (no-answer probabilities within 1e-4),
#   - elma-ask answers with the model's default policy,
#   - elma doctor, elma power sample and elma keys run.
# Exit status: 0 all held, 1 a check failed.
set -euo pipefail
PY36=$1
BIN=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV36=$ROOT/.venv36
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
run() {  # run NAME CMD...: quiet unless it fails, then the end of its log
    local name=$1; shift
    if ! "$@" > "$WORK/$name.log" 2>&1; then echo "$name failed:"; tail -5 "$WORK/$name.log"; exit 1; fi
}

"$PY36" -c 'import sys; assert sys.version_info[:2] == (3, 6), sys.version' || { echo "not a Python 3.6: $PY36"; exit 1; }
if [ ! -x "$VENV36/bin/elma" ] || [ "$ROOT/setup.cfg" -nt "$VENV36/bin/elma" ]; then
    rm -rf "$VENV36"
    "$PY36" -m venv "$VENV36"
    "$VENV36/bin/python" -m pip install -q --upgrade 'pip<22' 2>&1 | grep -v 'is ignored' || true
fi
# Not editable: the 3.6 venv gets the package as a Jetson gets it.
"$VENV36/bin/python" -m pip install -q "$ROOT[update]" 'onnxruntime==1.10.0' 2>&1 | grep -v 'is ignored' || true
"$VENV36/bin/python" -c 'import tokenizers, numpy, onnxruntime, nacl; print("python 3.6: tokenizers", tokenizers.__version__, "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'

B=$WORK/bundle
run export "$BIN/elma" export "$ROOT/models/elma-minilm-l6-squad2" -o "$B" --opset 13
DATA=$HERE/sample.json
run bench36 "$VENV36/bin/elma-bench" "$B" --data "$DATA" --report-dir "$WORK/r36"
run bench311 "$BIN/elma-bench" "$B" --data "$DATA" --report-dir "$WORK/r311"
"$BIN/python" - "$WORK" <<'EOF'
import json, sys
w = sys.argv[1]
p36, p311 = (json.load(open("%s/%s/predictions.json" % (w, r))) for r in ("r36", "r311"))
n36, n311 = (json.load(open("%s/%s/na_probs.json" % (w, r))) for r in ("r36", "r311"))
diff = [q for q in p311 if p36.get(q) != p311[q]]
gap = max(abs(n36[q] - n311[q]) for q in n311)
print("elma-bench: %d questions, %d answers differ between 3.6 and this Python, largest no-answer probability gap %.1e"
      % (len(p311), len(diff), gap))
sys.exit(1 if diff or gap > 1e-4 or len(p36) != len(p311) else 0)
EOF
"$VENV36/bin/elma-ask" --model "$B" --json --context "$(cat "$HERE/context.txt")" "When did the Normans conquer England?" \
    > "$WORK/ask.json"
"$BIN/python" -c 'import json,sys; a=json.load(open(sys.argv[1])); print("elma-ask:", repr(a["text"]), "exit layer", a["exit_layer"], "policy", a["policy"], "(" + a["policy_source"] + ")"); sys.exit(a["text"] != "1066")' "$WORK/ask.json"
set +e
"$VENV36/bin/elma" doctor --json > "$WORK/doctor.json"; rc=$?
set -e
[ "$rc" = 0 ] || [ "$rc" = 3 ] || { echo "elma doctor exited $rc"; exit 1; }   # 3: no Jetson here
"$BIN/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); c=[x for x in d["checks"] if x["name"]=="python"][0]; print("elma doctor:", c["status"], c["detail"]); sys.exit(c["status"] != "OK" or "3.6" not in c["detail"])' "$WORK/doctor.json"
run power "$VENV36/bin/elma" power sample --source null --duration 0.1 && echo "elma power sample: ok"
run keys "$VENV36/bin/elma" keys generate "$WORK/key" && echo "elma keys generate: ok"
echo "device side on Python 3.6: all checks held"
