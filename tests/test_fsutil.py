"""elma.fsutil: the one rule for outputs (refused unless --overwrite) and the writes that are never half done."""

import os

import pytest

from elma.errors import OutputExistsError, UsageError
from elma.fsutil import Output, atomic_write, check_outputs, staged_dir, write_json


def test_free_paths_and_empty_folders_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    check_outputs([Output(tmp_path / "new.json", "-o"), Output(tmp_path / "empty", "--report-dir", folder=True),
                   Output(tmp_path / "a" / "b" / "deep", "-o2", folder=True), Output(None, "--unused")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], "checking creates nothing"


def test_a_taken_path_is_refused_unless_overwrite(tmp_path):
    taken = tmp_path / "p.json"
    taken.write_text("mine")
    with pytest.raises(OutputExistsError, match=r"p\.json: already exists; pass --overwrite to replace it or choose another -o"):
        check_outputs([Output(taken, "-o")])
    check_outputs([Output(taken, "-o")], overwrite=True)
    with pytest.raises(OutputExistsError, match=r"already exists \(never\); choose another -o"):
        check_outputs([Output(taken, "-o", hint="never")], overwrite=None)
    assert taken.read_text() == "mine"


def test_overwrite_replaces_only_an_earlier_output_of_the_same_kind(tmp_path):
    report, other = tmp_path / "report", tmp_path / "other"
    report.mkdir()
    (report / "report.json").write_text("{}")
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    spec = dict(folder=True, what="a report", replaces=("report.json",))
    check_outputs([Output(report, "--report-dir", **spec)], overwrite=True)
    with pytest.raises(OutputExistsError, match="is not a report .no report.json., the only folder --overwrite replaces"):
        check_outputs([Output(other, "--report-dir", **spec)], overwrite=True)
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_outputs([Output(report, "-o")], overwrite=True)
    with pytest.raises(OutputExistsError, match="is a file"):
        check_outputs([Output(other / "thesis.tex", "--report-dir", folder=True)], overwrite=True)


def test_clashing_outputs_inputs_and_parents_are_usage_errors(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("{}")
    with pytest.raises(UsageError, match="name the same place"):
        check_outputs([Output(tmp_path / "x.json", "-o"), Output(tmp_path / "x.json", "--na-probs-out")])
    with pytest.raises(UsageError, match="name the same place"):
        check_outputs([Output(tmp_path / "r", "--report-dir", folder=True), Output(tmp_path / "r" / "p.json", "-p")])
    with pytest.raises(UsageError, match="would replace the input"):
        check_outputs([Output(data, "-o")], overwrite=True, inputs=[data])
    with pytest.raises(UsageError, match="would replace the input"):
        check_outputs([Output(tmp_path, "-o", folder=True)], overwrite=True, inputs=[data])
    with pytest.raises(UsageError, match="is not a folder"):
        check_outputs([Output(data / "p.json", "-o")])


def test_atomic_write_without_overwrite_refuses_a_file_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "p.json"

    def write(tmp):
        target.write_text("appeared")  # another process, between the check and the rename
        with open(tmp, "w") as f:
            f.write("new")

    with pytest.raises(OutputExistsError):
        atomic_write(target, write, overwrite=False)
    assert target.read_text() == "appeared" and sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]
    write_json(target, {"a": 1})  # library default: replace (checkpoints, manifests)
    assert target.read_text() == '{\n  "a": 1\n}\n'


def test_staged_dir_publishes_complete_folders_and_keeps_the_old_one_until_then(tmp_path):
    target = tmp_path / "report"
    with staged_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1" and oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(OutputExistsError):
        with staged_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
    with pytest.raises(RuntimeError):
        with staged_dir(target, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("the run failed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"], "the old folder, untouched"
    with staged_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"], "no temporary or old folder left"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
