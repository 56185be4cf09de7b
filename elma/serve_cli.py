"""``elma-serve``: the offload server (full-depth model, error-record store) on uvicorn.

    elma-serve --tokens tokens.txt --add-device jetson-01        # prints the new device's token once
    elma-serve --model BUNDLE --host 127.0.0.1 --port 8000 --db sqlite:///records.sqlite3 --tokens tokens.txt
    elma-serve ... --releases REPO     # also serve signed model releases (elma publish) to `elma update`

Exit codes: 0 done (uvicorn stops gracefully on Ctrl-C or SIGTERM, then re-raises the signal), 2 usage or
setup error (one line on stderr). Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

from elma.errors import ElmaError

PROG = "elma-serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Serve the full-depth model to devices and store their error records.")
    p.add_argument("--model", help="bundle or ELMA model folder (default: the shipped reference model)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt", "torch"), help="default: onnxruntime for bundles, torch for folders")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", dest="db_url", default="sqlite:///elma-records.sqlite3",
                   help="SQLAlchemy URL of the record store, e.g. postgresql+psycopg://elma@127.0.0.1/elma")
    p.add_argument("--tokens", dest="tokens_file", required=True, help="device tokens file: lines 'DEVICE_ID sha256:HEX'")
    p.add_argument("--add-device", metavar="ID", help="add a device to --tokens, print its token, and exit")
    p.add_argument("--releases", dest="releases_dir", metavar="DIR", help="serve this release repository (elma publish) "
                   "to the devices under /v1/releases/ (elma update)")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 2200000)")
    p.add_argument("--rate-per-s", type=float, help="requests per second per device (default 20)")
    p.add_argument("--burst", type=int, help="requests a device may send at once (default 40)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def run(args) -> int:
    from elma.offload.server import ServeConfig, add_device, load_tokens

    if args.add_device:
        try:
            token = add_device(Path(args.tokens_file), args.add_device)
        except ValueError as err:
            raise ElmaError(str(err)) from err
        print(token)
        print(f"{PROG}: added {args.add_device} to {args.tokens_file}; put the token above in the device's token file "
              f"(it is not stored anywhere)", file=sys.stderr)
        return 0
    known = {f.name for f in fields(ServeConfig)}
    try:
        config = ServeConfig(**{k: v for k, v in vars(args).items() if k in known and v is not None})
    except ValueError as err:
        raise ElmaError(str(err)) from err
    tokens = load_tokens(Path(config.tokens_file))
    if config.releases_dir is not None and not (Path(config.releases_dir) / "root").is_dir():
        raise ElmaError(f"--releases {config.releases_dir}: not a release repository (create it with `elma keys init`)")
    try:
        import uvicorn

        from elma.offload.server import RecordStore, RuntimeAnswerer, create_app
    except ImportError as err:
        raise ElmaError(f"the server needs the serve extra: pip install 'elma[serve]' ({err})") from err
    store = RecordStore(config.db_url)
    try:
        answerer = RuntimeAnswerer.open(config.model, config.backend)
    except ValueError as err:
        raise ElmaError(str(err)) from err
    try:
        app = create_app(config, answerer, store, tokens)
        logging.getLogger(PROG).info("serving %s (%d layers) for %d devices on http://%s:%d, records in %s", answerer.model,
                                     answerer.num_layers, len(tokens), config.host, config.port, store.engine_url(config.db_url))
        uvicorn.run(app, host=config.host, port=config.port, log_level="info" if args.verbose else "warning")
    finally:
        answerer.close()
        store.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ElmaError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
