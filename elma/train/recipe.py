"""Training recipes: ``elma train --config recipe.toml``, a TOML table whose keys are ``TrainConfig``'s fields.

    model = "albert-base-v2"
    train_files = ["data/squad2/train-v2.0.json"]
    max_seq_length = 384
    learning_rate = 3e-5

Flags given on the command line override the file; paths in the file are read as given (relative to the
directory the command runs in). Python 3.11+ reads TOML with ``tomllib``; older Pythons need ``tomli``.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import fields
from pathlib import Path

from elma.errors import UsageError


def read_recipe(path: "str | Path") -> dict:
    """The recipe's settings, checked against ``TrainConfig``'s fields and types.

    Raises:
        UsageError: a missing or malformed file, an unknown key, or a value of the wrong type.
    """
    if sys.version_info >= (3, 11):
        import tomllib  # novermin (tomli below 3.11)
    else:  # pragma: no cover - exercised on Python < 3.11 only
        try:
            import tomli as tomllib
        except ImportError as err:
            raise UsageError("--config needs tomli on Python < 3.11 (pip install tomli)") from err
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such recipe file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid TOML: {err}") from None
    return check_settings(data, str(path))


def check_settings(data: dict, where: str) -> dict:
    """``data`` with lists made tuples, or a ``UsageError`` naming the first bad key."""
    from elma.train.trainer import TrainConfig

    types = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UsageError(f"{where}: unknown setting {key!r}; settings are TrainConfig's fields "
                             f"({', '.join(sorted(known))})")
        out[name] = _check_type(name, value, types[name], where)
    return out


def _check_type(name: str, value, hint, where: str):
    args = typing.get_args(hint)
    base = typing.get_origin(hint)
    if base is typing.Union:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
        base, args = typing.get_origin(hint), typing.get_args(hint)
    if base is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    wanted = getattr(hint, "__name__", str(hint)) if base is not tuple else "a list of strings"
    raise UsageError(f"{where}: {name} must be {wanted} (got {value!r})")
