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
])
def test_setup_errors_are_one_line_exit_2(tmp_path, capsys, argv, match):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"dev {hash_token('t')}\n")
    argv = [str(tmp_path / "missing") if a == "MISSING" else str(tokens) if a == "TOKENS" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and err.startswith("elma-serve: error:")
