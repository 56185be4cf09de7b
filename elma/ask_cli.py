"""``elma-ask``: ask a model a question about a passage, from the terminal.

    elma-ask "Who led the raiders?" --context-file passage.txt
    elma-ask "Who led the raiders?" --context "The Normans ..."
    cat passage.txt | elma-ask "Who led the raiders?"
    elma-ask -i --context-file passage.txt          # one passage, many questions (line editing)
    elma-ask "..." --context-file p.txt --json --policy entropy:0.4,0.4 --backend onnxruntime --model BUNDLE
    elma-ask "..." --context-file p.txt --server http://10.0.0.2:8000 --token-file device.token --deadline-ms 300
    elma-ask "..." --context-file p.txt --server URL --token-file device.token --split auto   # learn where to offload

Without ``--policy`` the model's calibrated default policy runs (``none``, full depth, when it has none); the
output says which policy ran, where it came from and which backend answered. A model folder (the shipped
reference model is one) is exported once to an ONNX bundle cached under ``~/.cache/elma/bundles`` and answered
with ONNX Runtime from then on, without importing torch (``elma.runtime.bundle_cache``); ``--backend torch``
runs the folder with PyTorch instead, and so does a machine without the export extra (with a one-line note).

With ``--server``, an unsolved question goes to the offload server (full-depth
model) within ``--deadline-ms``; past it the local answer is printed, marked
deferred, and the question stays queued for ``elma sync --upload`` (interactive
mode also uploads in the background). ``--split N`` runs at most N layers on the
device before an unsolved question goes to the server (N = the model's layers:
never offload); ``--split auto`` learns N per model on this device (a bandit whose
state is kept in ``--split-state``; ``elma.offload.split``, docs/offload-split.md).

Exit codes: 0 answered (also when the answer is "no answer"), 2 usage or input
error, 3 model or bundle error. Every error is one line on stderr.

Only the standard library is imported at module level, so ``elma-ask --help``
works without torch or onnxruntime; the runtime is imported once a question is
to be answered.
"""

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

from elma.cli_exit import EXIT_OK, UsageError, run_reported
from elma.errors import BundleError, ElmaError

PROG = "elma-ask"
MAX_CONTEXT_BYTES = 1_000_000  # 1 MB of UTF-8: about 150k words, already thousands of windows on a Jetson
BACKEND_CHOICES = ("onnxruntime", "tensorrt", "torch")



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Answer a question about a passage with an early-exit model.",
        epilog=f"The context comes from --context, --context-file, or standard input (at most {MAX_CONTEXT_BYTES} "
               f"bytes of UTF-8 text). Exit codes: 0 answered (also 'no answer'), 2 usage or input error, "
               f"3 model or bundle error.")
    p.add_argument("question", nargs="?", help="the question (omit it, or pass -i, for interactive mode)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--context", metavar="TEXT", help="the passage")
    src.add_argument("--context-file", metavar="FILE", help="file holding the passage ('-' for standard input)")
    p.add_argument("-i", "--interactive", action="store_true", help="ask many questions about one passage")
    p.add_argument("--model", metavar="PATH", help="bundle folder, or an ELMA model folder (exported once to a cached "
                   "ONNX bundle); default: $ELMA_MODEL, else MODELS_DIR/current (elma update), else a bundle under "
                   "models/, else the shipped reference model")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="default: onnxruntime (a model folder through its cached "
                   "bundle); torch runs a model folder with PyTorch")
    p.add_argument("--policy", metavar="SPEC", help="exit policy, e.g. entropy:0.4,0.4, maxprob:0.9, patience:2, "
                   "similarity:bikl,0.05,2, static:3; none forces full depth (default: the model's calibrated "
                   "default policy, else none); +skim:LAYER,THRESHOLD drops unlikely context tokens after LAYER, "
                   "e.g. entropy:0.4,0.4+skim:2,0.001")
    p.add_argument("--max-layer", type=int, metavar="N", help="last layer allowed; unconfident by then = 'unsolved'")
    p.add_argument("--json", action="store_true", help="one JSON object per answer")
    p.add_argument("--server", metavar="URL", help="offload server for unsolved questions, e.g. http://10.0.0.2:8000")
    p.add_argument("--token-file", metavar="FILE", help="this device's bearer token (needed with --server)")
    p.add_argument("--deadline-ms", type=float, metavar="N", help="longest wait for the server, ms (default 300)")
    p.add_argument("--queue", metavar="FILE", help="offload record queue (default: $ELMA_OFFLOAD_QUEUE, else "
                   "~/.local/share/elma/offload.sqlite3)")
    p.add_argument("--split", metavar="N|auto", help="with --server: run at most N layers here before an unsolved "
                   "question is offloaded (N = the model's layers: never offload); auto learns N for this model on this "
                   "device from measured costs and exit confidences")
    p.add_argument("--split-state", metavar="FILE", help="state of --split auto (default: $ELMA_SPLIT_STATE, else "
                   "~/.local/share/elma/split/MODEL_FINGERPRINT.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the runtime loads")
    return p


def find_default_model() -> Path:
    """$ELMA_MODEL, else ``MODELS_DIR/current`` (elma update), else the first bundle under ``models/``, else the
    reference model folder."""
    from elma.paths import REPO_ROOT, default_model_dir, installed_model

    if os.environ.get("ELMA_MODEL"):
        return Path(os.environ["ELMA_MODEL"])
    if installed_model() is not None:
        return installed_model()
    models = REPO_ROOT / "models"
    if models.is_dir():
        bundles = sorted(p for p in models.iterdir() if (p / "manifest.json").is_file())
        if bundles:
            return bundles[0]
    return default_model_dir()


def decode_context(raw: bytes, where: str) -> str:
    """Bytes of a passage -> text, refusing what is too large, binary or not UTF-8."""
    if len(raw) > MAX_CONTEXT_BYTES:
        raise UsageError(f"{where} is {len(raw)} bytes; the limit is {MAX_CONTEXT_BYTES} bytes "
                         f"(ask about the relevant part of the document)")
    if b"\x00" in raw:
        raise UsageError(f"{where} holds NUL bytes: it looks like a binary file, not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{where} is not UTF-8 text (bad byte at offset {err.start})") from err
    if not text.strip():
        raise UsageError(f"{where} is empty; give the passage the question is about")
    return text


def read_context(args, stdin) -> str:
    if args.context is not None:
        return decode_context(args.context.encode("utf-8", "surrogateescape"), "--context")
    if args.context_file not in (None, "-"):
        path = Path(args.context_file)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONTEXT_BYTES + 1)
        except FileNotFoundError as err:
            raise UsageError(f"{path}: no such context file") from err
        except IsADirectoryError as err:
            raise UsageError(f"{path}: is a folder, not a context file") from err
        except OSError as err:
            raise UsageError(f"{path}: cannot read the context file: {err.strerror}") from err
        return decode_context(raw, str(path))
    if args.context_file is None and stdin.isatty():
        raise UsageError("no context: pass --context TEXT, --context-file FILE, or pipe the passage on standard input")
    buffer = getattr(stdin, "buffer", None)
    raw = buffer.read(MAX_CONTEXT_BYTES + 1) if buffer is not None else stdin.read(MAX_CONTEXT_BYTES + 1).encode("utf-8")
    return decode_context(raw, "standard input")


def answer_json(question: str, answer, backend: str = "") -> str:
    record = {"question": question, **answer.to_dict(), "backend": backend}
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(record, ensure_ascii=False)


def answer_text(answer, backend: str = "") -> str:
    from elma.runtime.defaults import describe_policy

    head = f"Answer: {answer.text}" if not answer.no_answer else "No answer in the passage."
    detail = (f"  exit layer {answer.exit_layer}/{answer.num_layers}, {answer.latency_ms:.1f} ms; "
              f"policy {describe_policy(answer.policy, answer.policy_source)}")
    if backend:
        detail += f"; backend {backend}"
    if answer.unsolved:
        detail += "; unsolved: no exit was confident"
    return f"{head}\n{detail}"


def offload_json(question: str, result, backend: str = "", split=None) -> str:
    """The local answer's fields, with text/no_answer of the answer given and where it came from (and, with
    ``split`` = (layer, "fixed" or "learnt"), the split layer it ran under)."""
    local = result.local
    record = {"question": question, **local.to_dict(), "backend": backend, "text": result.text, "no_answer": result.no_answer,
              "local_text": local.text, "offloaded": result.offloaded, "deferred": result.deferred,
              "offload_reason": result.reason, "record_id": result.record_id, "offload_ms": result.offload_ms,
              "latency_ms": result.latency_ms}
    if split is not None:
        record["split"], record["split_source"] = split
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(record, ensure_ascii=False)


def offload_text(result, backend: str = "", split=None) -> str:
    head = f"Answer: {result.text}" if not result.no_answer else "No answer in the passage."
    text = f"{head}\n{answer_text(result.local, backend).splitlines()[1]}"
    if split is not None:
        text += f"; split {split[0]} ({split[1]})"
    if result.offloaded:
        text += f"\n  offloaded ({result.reason}): the server's full-depth answer, {result.offload_ms:.1f} ms"
    elif result.deferred:
        text += f"\n  deferred ({result.reason}): no server answer in time; local answer given, question queued"
    return text


def _ask(rt, question: str, context: str, args, out, offload=None, backend: str = "", splitter=None) -> None:
    try:
        if splitter is not None:
            result, split = splitter.ask(rt, question, context)
            shown = (split, splitter.source)
            print(offload_json(question, result, backend, shown) if args.json else offload_text(result, backend, shown),
                  file=out)
            return
        if offload is not None:
            result = offload.ask(rt, question, context, max_layer=args.max_layer)
            print(offload_json(question, result, backend) if args.json else offload_text(result, backend), file=out)
            return
        answer = rt.ask(question, context, max_layer=args.max_layer)
    except ValueError as err:
        raise UsageError(str(err)) from err
    print(answer_json(question, answer, backend) if args.json else answer_text(answer, backend), file=out)


def open_offload(args):
    """An ``OffloadClient`` for --server, or None."""
    if args.server is None:
        if args.token_file or args.deadline_ms is not None:
            raise UsageError("--token-file and --deadline-ms need --server URL")
        return None
    if not args.token_file:
        raise UsageError("--server needs --token-file FILE (this device's bearer token)")
    from elma.errors import OffloadError
    from elma.offload.client import OffloadClient, OffloadConfig, default_queue_path, read_token_file
    from elma.offload.queue import RecordQueue

    try:
        config = OffloadConfig(args.server, token=read_token_file(args.token_file),
                               deadline_ms=300.0 if args.deadline_ms is None else args.deadline_ms)
    except (ValueError, OffloadError) as err:
        raise UsageError(str(err)) from err
    return OffloadClient(config, RecordQueue(Path(args.queue) if args.queue else default_queue_path()))


class FollowCurrent:
    """The runtime of ``MODELS_DIR/current``, reopened between questions when ``elma update`` moved the symlink to
    another release (a release that fails to open leaves the old runtime in use)."""

    def __init__(self, link: Path, opener, rt):
        self.link, self.opener, self.rt = link, opener, rt
        self.target = os.path.realpath(link)

    def get(self):
        target = os.path.realpath(self.link)
        if target != self.target:
            try:
                new = self.opener(self.link)
            except (ElmaError, ValueError, OSError) as err:
                logging.getLogger(PROG).warning("new release %s does not open (%s); keeping %s", target, err, self.target)
                self.target = target
                return self.rt
            logging.getLogger(PROG).info("model updated: %s -> %s", self.target, target)
            self.rt.close()
            self.rt, self.target = new, target
        return self.rt


def interactive(rt, context: str, args, stdin, out, offload=None, backend: str = "",
                follow: Optional[FollowCurrent] = None, splitter=None) -> None:
    """Read questions until EOF or an empty line; bad questions are reported and skipped. With ``follow``, each
    question goes to the release current at the time it is asked."""
    if stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    prompt = "question> " if stdin.isatty() else ""
    while True:
        try:
            line = input(prompt) if stdin is sys.stdin else stdin.readline()
        except EOFError:
            break
        if not line:
            break
        question = line.strip()
        if not question:
            if stdin.isatty():
                continue
            break
        if follow is not None:
            rt = follow.get()
        try:
            _ask(rt, question, context, args, out, offload, backend, splitter)
        except UsageError as err:
            print(f"{PROG}: {err}", file=sys.stderr)


def run(args, stdin=None, out=None) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    from elma.runtime.policies import parse_policy  # numpy only

    if args.policy is not None:
        try:
            parse_policy(args.policy)
        except ValueError as err:
            raise UsageError(f"--policy: {err}") from err
    check_split_flags(args)
    if args.question is not None and not args.question.strip():
        raise UsageError("the question is empty; ask something about the passage")
    want_interactive = args.interactive or args.question is None
    if want_interactive and args.context is None and args.context_file in (None, "-"):
        raise UsageError("interactive mode reads questions from standard input: give the passage with --context or "
                         "--context-file (or pass the question as an argument)")
    context = read_context(args, stdin)
    offload = open_offload(args)
    try:
        return _run_model(args, context, want_interactive, stdin, out, offload)
    finally:
        if offload is not None:
            offload.queue.close()


def check_split_flags(args) -> None:
    """--split and --split-state, before any model is opened (the layer range is checked once it is)."""
    if args.split is None:
        if args.split_state is not None:
            raise UsageError("--split-state needs --split auto")
        return
    from elma.offload.split_ask import AUTO, parse_split

    try:
        args.split = parse_split(args.split)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if args.server is None:
        raise UsageError("--split needs --server URL: it says where to stop before offloading")
    if args.max_layer is not None:
        raise UsageError("--split and --max-layer both set the last local layer; give one")
    if args.split_state is not None and args.split != AUTO:
        raise UsageError("--split-state needs --split auto (a fixed split learns nothing)")


def open_splitter(rt, args, offload):
    """The ``SplitAsker`` of --split for ``rt``, or None."""
    if args.split is None:
        return None
    from elma.offload.split_ask import SplitAsker
    from elma.runtime.policies import NoExitPolicy

    if args.split != "auto" and not 1 <= args.split <= rt.num_layers:
        raise UsageError(f"--split must be in 1..{rt.num_layers} or auto (got {args.split})")
    if isinstance(rt.resolve_policy(args.policy).exit_policy, NoExitPolicy):
        raise UsageError("--split needs an exit policy that can be unsure (policy none never offloads): pass --policy, "
                         "or calibrate the model (elma calibrate)")
    return SplitAsker.open(rt, offload, args.split, args.split_state)


def _run_model(args, context: str, want_interactive: bool, stdin, out, offload) -> int:
    model = Path(args.model) if args.model else find_default_model()
    if not model.exists():
        raise ElmaError(f"{model}: no such model or bundle; pass --model BUNDLE (create one with `elma export`)")
    rt, backend = open_runtime(model, args.backend, args.policy)
    follow = None
    if want_interactive and args.model is None and model == _installed() and args.split is None:
        follow = FollowCurrent(model, lambda path: open_runtime(path, args.backend, args.policy)[0], rt)
    with rt:
        if args.max_layer is not None and not 1 <= args.max_layer <= rt.num_layers:
            raise UsageError(f"--max-layer must be in 1..{rt.num_layers} (got {args.max_layer})")
        splitter = open_splitter(rt, args, offload)
        if want_interactive:
            uploader = None
            if offload is not None:
                from elma.offload.client import BackgroundUploader

                uploader = BackgroundUploader(offload).start()
            try:
                interactive(rt, context, args, stdin, out, offload, backend, follow, splitter)
            finally:
                if uploader is not None:
                    uploader.stop()
                if follow is not None and follow.rt is not rt:
                    follow.rt.close()
        else:
            _ask(rt, args.question, context, args, out, offload, backend, splitter)
    return EXIT_OK


def _installed() -> Optional[Path]:
    from elma.paths import installed_model

    return installed_model()


def open_runtime(model: Path, backend: Optional[str], policy: Optional[str]):
    """(runtime, which backend answers) for ``model``: a bundle as it is; a model folder through its cached ONNX
    bundle (``--backend`` onnxruntime or none), or with torch (``--backend torch``, or as the fallback, with a note)."""
    from elma.errors import ExportError
    from elma.runtime.engine import Runtime, is_bundle

    def note(message: str) -> None:
        print(f"{PROG}: {message}", file=sys.stderr)

    try:
        if not is_bundle(model) and model.is_dir() and backend in (None, "onnxruntime"):
            from elma.runtime.bundle_cache import open_cached

            try:
                rt = open_cached(model, policy=policy, notify=note)
                return rt, f"{rt.backend.describe()}, cached bundle of {model.name}"
            except (ExportError, ImportError, BundleError) as err:
                if backend == "onnxruntime":
                    raise ElmaError(f"{model}: no ONNX bundle for onnxruntime: {' '.join(str(err).split())}") from err
                note(f"note: answering with torch, slow to start ({' '.join(str(err).split())})")
            backend = "torch"
        rt = Runtime.open(model, backend=backend, policy=policy)
        return rt, rt.backend.describe()
    except ValueError as err:
        raise UsageError(str(err)) from err
    except ImportError as err:
        raise ElmaError(f"the {backend or 'onnxruntime'} backend cannot be imported here: {err}") from err


def main(argv: Optional[List[str]] = None, stdin=None, stdout=None) -> int:
    """Run elma-ask; ``stdin``/``stdout`` default to the process's (tests pass their own)."""
    args = build_parser().parse_args(argv)  # argparse exits with 2 on bad usage
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reported(PROG, lambda: run(args, stdin, stdout))


if __name__ == "__main__":
    sys.exit(main())
