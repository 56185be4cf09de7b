"""``elma-serve``: the offload server (full-depth model, error-record store) on uvicorn, or on Ray Serve.

    elma-serve --tokens tokens.txt --add-device jetson-01        # prints the new device's token once
    elma-serve --model BUNDLE --host 127.0.0.1 --port 8000 --db sqlite:///records.sqlite3 --tokens tokens.txt
    elma-serve ... --releases REPO     # also serve signed model releases (elma publish) to `elma update`
    elma-serve ... --engine ray --replicas 2 --db postgresql+psycopg://elma@127.0.0.1/elma   # Ray Serve, batched
    elma-serve ... --engine ray --ray-topology combined --replicas 2 ...  # the model inside the ingress: one hop less
    elma-serve ... --engine ray --ray-address auto                     # join a running Ray cluster (docs/ray-serve.md)

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
from elma.offload.config import TOPOLOGIES

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
    ray = p.add_argument_group("Ray Serve (--engine ray; docs/ray-serve.md)")
    p.add_argument("--engine", choices=("uvicorn", "ray"), default="uvicorn",
                   help="uvicorn: one process (default); ray: Ray Serve, model replicas, batching")
    ray.add_argument("--ray-address", dest="address", metavar="ADDR", help="join this Ray cluster (e.g. auto, ray://HOST:10001) "
                     "instead of starting Ray here")
    ray.add_argument("--ray-topology", dest="topology", choices=TOPOLOGIES, help="split: one ingress replica "
                     "calls N model replicas (default); combined: N replicas each holding the app and a model, one hop "
                     "less (docs/ray-serve.md)")
    ray.add_argument("--replicas", type=int, help="model replicas (default 1)")
    ray.add_argument("--min-replicas", type=int, help="autoscale the model replicas from this many ...")
    ray.add_argument("--max-replicas", type=int, help="... up to this many")
    ray.add_argument("--no-batching", dest="batching", action="store_false", default=None,
                     help="answer one question at a time (default: batch concurrent questions into Runtime.ask_batch)")
    ray.add_argument("--max-batch-size", type=int, help="questions per batch at most (default 8)")
    ray.add_argument("--batch-wait-timeout-s", type=float, help="how long a batch waits to fill (default 0.005)")
    ray.add_argument("--max-ongoing-requests", type=int, help="requests one replica holds at once (default 16)")
    ray.add_argument("--max-queued-requests", type=int, help="requests queued for the replicas; beyond: 503 with "
                     "Retry-After (default 64)")
    ray.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per replica (default 1: cores / replicas)")
    ray.add_argument("--replica-cpus", type=float, help="CPUs Ray reserves per replica (default 1)")
    ray.add_argument("--object-store-mb", type=int, help="object store of the Ray started here (default 200)")
    ray.add_argument("--server-timing", action="store_true", default=None, help="add a Server-Timing header (ms in the "
                     "app and awaiting the model) to every response, for benchmarks/offload_profile.py")
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
    from elma.offload.config import RayConfig, shared_store_problem

    try:
        config = ServeConfig(**config_args(args, ServeConfig))
        ray_config = RayConfig(**config_args(args, RayConfig))
    except ValueError as err:
        raise ElmaError(str(err)) from err
    if args.engine == "ray" and shared_store_problem(config.db_url, ray_config):
        raise ElmaError(shared_store_problem(config.db_url, ray_config))
    tokens = load_tokens(Path(config.tokens_file))
    if config.releases_dir is not None and not (Path(config.releases_dir) / "root").is_dir():
        raise ElmaError(f"--releases {config.releases_dir}: not a release repository (create it with `elma keys init`)")
    try:
        import uvicorn

        from elma.offload.server import RecordStore, RuntimeAnswerer, create_app
    except ImportError as err:
        raise ElmaError(f"the server needs the serve extra: pip install 'elma[serve]' ({err})") from err
    store = RecordStore(config.db_url)
    if args.engine == "ray":
        store.close()  # it opened (the URL works, the table exists); the ingress replica opens its own
        return run_ray(config, ray_config, tokens, args.verbose)
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


def config_args(args, cls) -> dict:
    """The flags given that name a field of the config dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in known and v is not None}


def run_ray(config, ray_config, tokens, verbose: bool) -> int:
    """Serve on Ray Serve until SIGINT or SIGTERM; then tear down what was started."""
    import signal
    import threading

    try:
        from elma.offload import ray_engine
    except ImportError as err:
        raise ElmaError(f"--engine ray needs Ray Serve: pip install 'elma[serve]' ({err})") from err
    if config.model and not Path(config.model).exists():
        raise ElmaError(f"--model {config.model}: no such bundle or model folder")
    ray_engine.start(config, ray_config, tokens, log_to_driver=verbose)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        where = f"Ray cluster {ray_config.address}" if ray_config.address else "a Ray started here"
        replicas = (f"{ray_config.min_replicas}-{ray_config.max_replicas}" if ray_config.max_replicas is not None
                    else str(ray_config.replicas))
        logging.getLogger(PROG).info("serving %s on %s with %s model replicas (%s topology, batching %s) for %d devices "
                                     "on http://%s:%d", config.model or "the reference model", where, replicas,
                                     ray_config.topology, "on" if ray_config.batching else "off", len(tokens),
                                     config.host, config.port)
        while not stop.wait(1.0):
            pass
    finally:
        ray_engine.stop(joined=ray_config.address is not None)
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
