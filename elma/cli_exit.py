"""Exit codes, one-line error reporting and the --overwrite flag shared by the console scripts (elma, elma-ask,
elma-bench)."""

import logging
import sys
from typing import Callable, Tuple, Type

from elma.errors import DataError, ElmaError, UsageError

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_MODEL", "UsageError", "add_overwrite", "run_reported"]

EXIT_OK, EXIT_USAGE, EXIT_MODEL = 0, 2, 3


def add_overwrite(p, what: str) -> None:
    """The one --overwrite flag every writing command takes."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} that is already there (refused otherwise, "
                   "exit 2); the old one stays until the new one is complete")


def run_reported(prog: str, call: Callable[[], int], plain_errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run ``call`` and turn every failure into one line on stderr and an exit code, never a traceback.

    Usage errors (an output already there included) and data errors exit 2; model, bundle and other
    errors exit 3; Ctrl-C exits 130.
    ``plain_errors`` are printed as they are (e.g. OSError from writing a report); anything else is
    reported as unexpected, with the traceback logged at debug level (``-v``).
    """
    try:
        return call()
    except (UsageError, DataError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ElmaError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug or an unexpected library failure: still one line (the traceback with -v)
        if isinstance(err, plain_errors):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return EXIT_MODEL
        logging.getLogger(prog).debug("unexpected error", exc_info=True)
        print(f"{prog}: error: unexpected {type(err).__name__}: {err} (rerun with -v for details)", file=sys.stderr)
        return EXIT_MODEL
