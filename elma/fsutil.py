"""File helpers: nothing ELMA writes is ever left half-written, and nothing a user owns is replaced unasked.

Every command that writes an output checks all its output paths first (``check_outputs``), before any work,
then writes each file under a temporary name and renames it into place (``atomic_write``), or fills a
temporary folder and renames that (``staged_dir``). A path that is already there is refused with one line
(``OutputExistsError``, exit status 2) unless the user passed ``--overwrite``; an old folder is replaced only
once the new one is complete.
"""

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

from elma.errors import OutputExistsError, UsageError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Output:
    """One output of a command, as ``check_outputs`` checks it.

    ``what`` and ``replaces`` guard ``--overwrite`` on a folder: it replaces only a folder holding one of the
    ``replaces`` files (a previous output of the same command, e.g. ``report.json``), never some other folder.
    """

    path: Optional[PathLike]  # None: the option was not given (skipped)
    flag: str  # the option that names it, e.g. "-o" or "--report-dir" (for the messages)
    folder: bool = False  # a folder output (an empty existing folder counts as free), else a file
    what: str = ""  # what a replaceable folder is, e.g. "an elma-bench report"
    replaces: Tuple[str, ...] = ()  # a folder is replaceable when it holds one of these files; () = any folder
    hint: str = ""  # added to the refusal, e.g. "add --resume to continue its checkpoint"


def check_outputs(outputs: Sequence[Output], overwrite: Optional[bool] = False,
                  inputs: Iterable[Optional[PathLike]] = ()) -> None:
    """Refuse, before any work starts, outputs that would replace something the user did not ask to replace.

    Args:
        outputs: every output the command will write (``path`` None: not asked for, skipped).
        overwrite: the user passed ``--overwrite``; None for a command without that flag (a taken path is
            always refused).
        inputs: the command's input paths: none of them may be an output or lie inside a folder output.

    Raises:
        OutputExistsError: an output is already there and ``overwrite`` is not set, or is of the other kind
            (a file where a folder goes), or is a folder that ``--overwrite`` may not replace.
        UsageError: two outputs share a path or nest, an input is an output, or a parent cannot hold the output.
    """
    given = [o for o in outputs if o.path is not None]
    resolved = [Path(os.path.abspath(o.path)) for o in given]
    for i, (out, path) in enumerate(zip(given, resolved)):
        for other, other_path in zip(given[:i], resolved[:i]):
            if path == other_path or (other.folder and other_path in path.parents) or (out.folder and path in other_path.parents):
                raise UsageError(f"{out.path}: {out.flag} and {other.flag} name the same place; give them separate paths")
        for inp in inputs:
            if inp is None:
                continue
            inp_path = Path(os.path.abspath(inp))
            if inp_path == path or (out.folder and path in inp_path.parents):
                raise UsageError(f"{out.path}: {out.flag} would replace the input {inp}; choose another {out.flag}")
        _check_parent(out, path)
        _check_one(out, Path(out.path), overwrite)


def _check_one(out: Output, path: Path, overwrite: Optional[bool]) -> None:
    if not os.path.lexists(path):
        return
    if path.is_dir() != out.folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputExistsError(f"{path}: exists and is {kind}, which {out.flag} does not replace; choose another {out.flag}")
    if out.folder and not any(path.iterdir()):
        return  # an empty folder holds nothing to lose
    if out.folder and out.replaces and not any((path / name).is_file() for name in out.replaces):
        raise OutputExistsError(f"{path}: exists and is not {out.what or 'an earlier output'} (no {out.replaces[0]}), "
                                f"the only folder --overwrite replaces; choose another {out.flag}")
    refuse_unless_overwrite(path, out.flag, overwrite, out.hint)


def refuse_unless_overwrite(what: object, flag: str, overwrite: Optional[bool], hint: str = "") -> None:
    """The one rule for an output that is already there: ``OutputExistsError`` (exit 2) unless ``overwrite``.

    ``what`` names it (a path, or e.g. "BUNDLE/manifest.json exit_thresholds"); ``overwrite`` None: the command
    has no --overwrite, so it is always refused.
    """
    if not overwrite:
        raise OutputExistsError(taken_message(what, flag, overwrite is not None, hint))


def taken_message(path: object, flag: str, can_overwrite: bool = True, hint: str = "") -> str:
    """The one line that refuses a taken output path."""
    if not can_overwrite:
        return f"{path}: already exists{' (' + hint + ')' if hint else ''}; choose another {flag}"
    return f"{path}: already exists; pass --overwrite to replace it{', ' + hint if hint else ''} or choose another {flag}"


def _check_parent(out: Output, path: Path) -> None:
    """The nearest existing ancestor must be a folder we may write in (else the work would be lost at the end)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{out.path}: cannot be created ({parent} is not a folder); choose another {out.flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{out.path}: cannot write in {parent} (permission denied); choose another {out.flag}")


def atomic_write(target: PathLike, write: Callable[[str], None], overwrite: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``target``, then rename it into place.

    ``overwrite=False`` refuses (``OutputExistsError``) a ``target`` that appeared meanwhile, at the rename:
    the last guard after ``check_outputs``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=str(target.parent))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file what open() would have
        if os.path.lexists(target):
            refuse_unless_overwrite(target, "path", overwrite)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(target: PathLike, obj: object, overwrite: bool = True) -> None:
    """Write ``obj`` as pretty JSON, atomically (``overwrite`` as in ``atomic_write``)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_mkdir(path: Path) -> None:
    """Give a ``mkdtemp`` folder (0700) the mode a plain ``mkdir`` would have."""
    os.chmod(path, 0o777 & ~current_umask())


def publish_dir(tmp: PathLike, target: PathLike, overwrite: bool = False) -> None:
    """Rename the finished folder ``tmp`` to ``target``.

    A non-empty ``target`` is refused (``OutputExistsError``) unless ``overwrite``; then it is first renamed
    aside and removed only after the new folder is in place, so a reader sees the old folder or the new one,
    never a mix. An empty ``target`` folder is simply replaced.
    """
    tmp, target = Path(tmp), Path(target)
    chmod_like_mkdir(tmp)
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        os.rmdir(target)
    if os.path.lexists(target):
        refuse_unless_overwrite(target, "path", overwrite)
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=str(target.parent)))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(tmp, target)
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


@contextlib.contextmanager
def staged_dir(target: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``target`` to fill; published as ``target`` (``publish_dir``, with ``overwrite``)
    when the block ends normally, removed when it raises, so ``target`` is never half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=str(target.parent)))
    try:
        yield tmp
        publish_dir(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
