"""elma-ask: answers from --context, --context-file and stdin, interactive mode, --json, the model-folder fallback
to torch, exit codes 0/2/3 and one-line errors (never a traceback), --help without torch."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from conftest import PASSAGES  # noqa: E402

from elma.ask_cli import MAX_CONTEXT_BYTES, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONTEXT, QAS = PASSAGES[0]
QUESTION = QAS[0][0]


class FakeStdin(io.StringIO):
    def __init__(self, text="", tty=False):
        super().__init__(text)
        self.tty = tty
        self.buffer = io.BytesIO(text.encode("utf-8"))

    def isatty(self):
        return self.tty


@pytest.fixture
def ask(capsys):
    def call(argv, stdin="", tty=False):
        """(exit code, stdout, stderr) of elma-ask in this process."""
        out = io.StringIO()
        try:
            code = main(argv, FakeStdin(stdin, tty), out)
        except SystemExit as e:  # argparse
            code = e.code
        return code, out.getvalue(), capsys.readouterr().err
    return call


@pytest.fixture(scope="module")
def bundle(tiny_bundles):
    return str(tiny_bundles.bundle("bert"))


def test_context_from_flag_file_and_stdin_give_the_same_answer(ask, bundle, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(CONTEXT)
    outs = [ask([QUESTION, "--model", bundle, "--context", CONTEXT]),
            ask([QUESTION, "--model", bundle, "--context-file", str(path)]),
            ask([QUESTION, "--model", bundle], stdin=CONTEXT)]
    for code, out, err in outs:
        assert code == 0 and err == ""
        assert out.startswith(("Answer: ", "No answer")) and "exit layer 3/3" in out
        assert " ms; policy none (no calibrated default); backend onnxruntime" in out, "which policy, why, which backend"
    first = outs[0][1].splitlines()[0]
    assert all(o[1].splitlines()[0] == first for o in outs)


def test_json_output(ask, bundle):
    code, out, _ = ask([QUESTION, "--model", bundle, "--context", CONTEXT, "--json", "--policy", "static:2"])
    record = json.loads(out)
    assert code == 0 and record["question"] == QUESTION and record["exit_layer"] == 2 and record["num_layers"] == 3
    assert len(record["layer_latency_ms"]) == 2 and record["policy"] == "static:2" and record["unsolved"] is False
    if not record["no_answer"]:
        assert CONTEXT[record["char_start"]:record["char_end"]] == record["text"]


def test_a_skimming_policy_reports_tokens_per_layer(ask, bundle):
    code, out, _ = ask([QUESTION, "--model", bundle, "--context", CONTEXT, "--json", "--policy", "none+skim:1,0.03"])
    record = json.loads(out)
    assert code == 0 and record["policy"] == "none+skim:1,0.03" and len(record["tokens_per_layer"]) == 3
    first, *rest = record["tokens_per_layer"]
    assert rest[0] == rest[1] < first, "layers 2 and 3 ran on the tokens kept after layer 1"


def test_interactive_mode_answers_each_line(ask, bundle):
    questions = [q for q, _ in QAS] + ["   ", "ignored after the empty line"]
    code, out, err = ask(["-i", "--model", bundle, "--context", CONTEXT, "--json"], stdin="\n".join(questions) + "\n")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and [json.loads(x)["question"] for x in lines] == [q for q, _ in QAS]


def test_a_model_folder_runs_on_torch(ask, tiny_bundles, bundle):
    code, out, _ = ask([QUESTION, "--model", str(tiny_bundles.model("bert")), "--context", CONTEXT, "--json",
                        "--backend", "torch"])
    assert code == 0
    want = json.loads(ask([QUESTION, "--model", bundle, "--context", CONTEXT, "--json"])[1])
    got = json.loads(out)
    assert (got["text"], got["char_start"], got["exit_layer"]) == (want["text"], want["char_start"], want["exit_layer"])


@pytest.mark.parametrize("argv, stdin, match", [
    (["", "--context", CONTEXT], "", "question is empty"),
    ([QUESTION, "--context", "  "], "", "--context is empty"),
    ([QUESTION], "", "standard input is empty"),
    ([QUESTION, "--context", CONTEXT, "--policy", "wobble:1"], "", "unknown exit policy 'wobble'"),
    ([QUESTION, "--context", CONTEXT, "--policy", "entropy:x"], "", "parameters must be numbers"),
    ([QUESTION, "--context", CONTEXT, "--policy", "none+skim:2"], "", "skim:LAYER,THRESHOLD"),
    ([QUESTION, "--context", CONTEXT, "--policy", "none+skim:3,0.1"], "", "leaves no layer to run on the kept tokens"),
    ([QUESTION, "--context", CONTEXT, "--max-layer", "7"], "", "--max-layer must be in 1..3"),
    ([QUESTION, "--context", CONTEXT, "--backend", "torch"], "", "the torch backend runs an ELMA model folder"),
    (["-i"], "", "interactive mode reads questions from standard input"),
])
def test_usage_and_input_errors_exit_2_with_one_line(ask, bundle, argv, stdin, match):
    code, out, err = ask(argv + ["--model", bundle], stdin=stdin)
    assert code == 2 and out == "" and match in err and len(err.strip().splitlines()) == 1, err


def test_bad_context_files_exit_2(ask, bundle, tmp_path):
    binary = tmp_path / "a.bin"
    binary.write_bytes(b"\x7fELF\x02\x01\x00\x00" * 100)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"word " * (MAX_CONTEXT_BYTES // 5 + 1))
    for path, match in [(binary, "binary"), (latin, "not UTF-8"), (huge, f"limit is {MAX_CONTEXT_BYTES} bytes"),
                        (tmp_path / "nope.txt", "no such context file"), (tmp_path, "is a folder")]:
        code, _, err = ask([QUESTION, "--model", bundle, "--context-file", str(path)])
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_model_errors_exit_3(ask, tmp_path, bundle):
    code, _, err = ask([QUESTION, "--model", str(tmp_path / "missing"), "--context", CONTEXT])
    assert code == 3 and "no such model or bundle" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    code, _, err = ask([QUESTION, "--model", str(broken), "--context", CONTEXT])
    assert code == 3 and "not valid JSON" in err


def run_cli(*argv, stdin=None, block_torch=False):
    """elma-ask in a fresh interpreter; ``block_torch`` makes torch and onnxruntime unimportable."""
    block = "sys.modules['torch'] = None; sys.modules['onnxruntime'] = None; " if block_torch else ""
    code = f"import sys; {block}from elma.ask_cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *argv], input=stdin, capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=120)


def test_help_works_without_torch_or_onnxruntime():
    proc = run_cli("--help", block_torch=True)
    assert proc.returncode == 0 and "--context-file" in proc.stdout and "Exit codes" in proc.stdout


def test_main_exit_codes_and_no_traceback(bundle):
    proc = run_cli(QUESTION, "--model", bundle, "--json", stdin=CONTEXT)
    assert proc.returncode == 0 and json.loads(proc.stdout)["num_layers"] == 3
    proc = run_cli("", "--model", bundle, "--context", CONTEXT)
    assert proc.returncode == 2 and proc.stderr.startswith("elma-ask: error:") and "Traceback" not in proc.stderr
    proc = run_cli(QUESTION, "--model", "/nonexistent/bundle", "--context", CONTEXT)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    proc = run_cli(QUESTION, "--bogus-flag")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_a_terminal_without_context_is_a_usage_error(ask, bundle):
    code, out, err = ask([QUESTION, "--model", bundle], tty=True)
    assert code == 2 and "no context" in err and out == ""
