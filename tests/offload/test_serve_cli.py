"""elma-serve's setup paths (no server started): --add-device, and one-line errors with exit code 2."""

import pytest

pytest.importorskip("fastapi")

from elma.offload.server import hash_token, load_tokens  # noqa: E402
from elma.serve_cli import main  # noqa: E402


def test_add_device_prints_the_token_once_and_stores_its_hash(tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    assert main(["--tokens", str(tokens), "--add-device", "jetson-01"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert load_tokens(tokens) == {hash_token(token): "jetson-01"} and "added jetson-01" in err
    assert main(["--tokens", str(tokens), "--add-device", "jetson-01"]) == 2
    assert "already has a token" in capsys.readouterr().err
    assert main(["--tokens", str(tokens), "--add-device", "bad id"]) == 2


@pytest.mark.parametrize("argv, match", [
    (["--tokens", "MISSING"], "cannot read the tokens file"),
    (["--tokens", "TOKENS", "--port", "0"], "port must be in 1..65535"),
    (["--tokens", "TOKENS", "--db", "nosuchdialect://x"], "cannot open the record store"),
    (["--tokens", "TOKENS", "--engine", "ray", "--replicas", "2"], "a SQLite record store serves one replica only"),
    (["--tokens", "TOKENS", "--engine", "ray", "--min-replicas", "1", "--max-replicas", "3"], "serves one replica only"),
    (["--tokens", "TOKENS", "--engine", "ray", "--ray-topology", "combined", "--replicas", "2"], "serves one replica only"),
    (["--tokens", "TOKENS", "--engine", "ray", "--ray-topology", "combined", "--min-replicas", "1", "--max-replicas",
      "2"], "serves one replica only"),
    (["--tokens", "TOKENS", "--engine", "ray", "--min-replicas", "1"], "autoscaling needs both"),
    (["--tokens", "TOKENS", "--engine", "ray", "--max-batch-size", "32"], "max_ongoing_requests must be >= max_batch_size"),
])
def test_setup_errors_are_one_line_exit_2(tmp_path, capsys, argv, match):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"dev {hash_token('t')}\n")
    argv = [str(tmp_path / "missing") if a == "MISSING" else str(tokens) if a == "TOKENS" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and err.startswith("elma-serve: error:")


def test_elma_serve_serves_until_terminated(tiny_bundles, tmp_path):
    """The command-line contract: elma-serve --model --host --port --db --tokens, then health, answer, SIGTERM."""
    pytest.importorskip("onnxruntime")
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from elma.offload.client import post_json
    from elma.offload.server import free_port

    bundle = tiny_bundles.bundle("bert")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"jetson-01 {hash_token('tok')}\n")
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from elma.serve_cli import main; sys.exit(main())",
                             "--model", str(bundle), "--host", "127.0.0.1", "--port", str(port),
                             "--db", f"sqlite:///{tmp_path / 'records.sqlite3'}", "--tokens", str(tokens)],
                            env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline_s = time.monotonic() + 60
        while True:
            try:
                reply = post_json(f"{url}/v1/answer", {"question": "Who?", "context": "Rollo led them."}, "tok", 5.0)
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline_s, proc.stdout.read() if proc.poll() is not None else "timeout"
                time.sleep(0.2)
        assert reply["num_layers"] == 3 and reply["exit_layer"] == 3  # full depth
        assert (tmp_path / "records.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM (uvicorn >= 0.29), so -15 is a clean stop too
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in out, out
