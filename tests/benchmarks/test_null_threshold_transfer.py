"""benchmarks/null_threshold_transfer.py refuses an existing --out before any model is loaded."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import null_threshold_transfer  # noqa: E402


def test_an_existing_report_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "rows.json"
    out.write_text("mine\n")
    with pytest.raises(SystemExit) as err:
        null_threshold_transfer.main([str(tmp_path / "no-model"), "--real", str(tmp_path / "real.json"),
                                      "--out", str(out)])
    assert err.value.code == 2 and "already exists" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
