"""Time and bytes of a signed model update on loopback: publish a bundle, then `elma update` a fresh device.

    elma export models/elma-minilm-l6-squad2 -o /tmp/ref-fp16 --precision fp16     # a bundle of the shipped model
    python benchmarks/update_time.py /tmp/ref-fp16 --repeat 3 [--json]

In one process, on a free loopback port: a release repository with fresh keys, the bundle published once
(hashing, health expectations, signing: ``publish_s``), ``elma-serve``'s app (uvicorn in a thread) serving
it, then ``--repeat`` installs onto fresh device folders. Per install: wall time, bytes received (metadata
included) against the bundle's size, and the time of each step (trust, check, download + verify, stage,
health, swap); then one "up to date" check (what a device's periodic poll costs). Server and device share this
process (and its GIL), so the figures are an upper bound of a loopback update; a Jetson adds its own disk and
onnxruntime start-up to ``health``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "update-benchmark-token"


@dataclass(frozen=True)
class UpdateTiming:
    """What one benchmark run measured."""

    bundle: str
    bundle_bytes: int  # sum of the release's file sizes
    files: int
    publish_s: float  # elma publish: copy, hash, health expectations, sign
    installs: int
    update_s_median: float  # a full install on a fresh device, median over --repeat
    update_s_min: float
    update_s_max: float
    bytes_received: int  # of one install, metadata included
    overhead_bytes: int  # bytes_received - bundle_bytes (root and release metadata, HTTP bodies only)
    step_s: Dict[str, float]  # median seconds per step of an install
    up_to_date_s: float  # a poll that finds nothing new
    up_to_date_bytes: int


def measure(bundle: Path, repeat: int) -> UpdateTiming:
    from elma.offload.server import BackgroundServer, RecordStore, ServeConfig, create_app, hash_token
    from elma.update import publish as pub
    from elma.update.signing import generate_key
    from elma.update.store import ModelStore
    from elma.update.updater import UpdateConfig, update

    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1 (got {repeat})")
    with tempfile.TemporaryDirectory(prefix="elma-update-bench-") as tmp:
        tmp_path = Path(tmp)
        root_key, release_key = generate_key(tmp_path / "root.key"), generate_key(tmp_path / "release.key")
        repo = tmp_path / "repo"
        pub.init_repo(repo, root_key, release_key)
        began = time.perf_counter()
        published = pub.publish(repo, bundle, release_key)
        publish_s = time.perf_counter() - began
        store = RecordStore(f"sqlite:///{tmp_path / 'records.sqlite3'}")
        app = create_app(ServeConfig(releases_dir=str(repo), rate_per_s=1e6, burst=1_000_000), lambda q, c: {}, store,
                         {hash_token(TOKEN): "bench"})
        walls: List[float] = []
        steps: Dict[str, List[float]] = {}
        received = 0
        with BackgroundServer(app) as server:
            for i in range(repeat):
                models = tmp_path / f"device-{i}"
                ModelStore(models).save_root((repo / pub.root_file(1)).read_bytes(), overwrite=False)
                marks: List[tuple] = []
                began = time.perf_counter()
                result = update(UpdateConfig(server.url, TOKEN, str(models)),
                                on_step=lambda name, marks=marks: marks.append((name, time.perf_counter())))
                end = time.perf_counter()
                assert result.status == "installed", result
                walls.append(end - began)
                received = result.bytes_received
                bounds = marks + [("end", end)]
                per: Dict[str, float] = {}
                for (name, t0), (_, t1) in zip(bounds, bounds[1:]):
                    key = "download+verify" if name in ("download", "verify") else name
                    per[key] = per.get(key, 0.0) + (t1 - t0)
                for k, v in per.items():
                    steps.setdefault(k, []).append(v)
            began = time.perf_counter()
            poll = update(UpdateConfig(server.url, TOKEN, str(tmp_path / "device-0")))
            up_to_date_s = time.perf_counter() - began
        store.close()
    return UpdateTiming(str(bundle), published.total_bytes, published.files, round(publish_s, 3), repeat,
                        round(statistics.median(walls), 3), round(min(walls), 3), round(max(walls), 3), received,
                        received - published.total_bytes, {k: round(statistics.median(v), 3) for k, v in steps.items()},
                        round(up_to_date_s, 3), poll.bytes_received)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="bundle folder (elma export)")
    p.add_argument("--repeat", type=int, default=3, help="installs onto fresh device folders (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from elma.errors import ElmaError

    try:
        r = measure(Path(args.bundle), args.repeat)
    except (ElmaError, ValueError) as err:
        print(f"update_time: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 3
    if args.json:
        print(json.dumps(asdict(r), indent=2))
        return 0
    print(f"bundle {r.bundle}: {r.files} files, {r.bundle_bytes / 1e6:.2f} MB; publish {r.publish_s:.2f} s")
    print(f"update on loopback ({r.installs} fresh installs): median {r.update_s_median:.2f} s (min {r.update_s_min:.2f}, "
          f"max {r.update_s_max:.2f}); {r.bytes_received} bytes received ({r.overhead_bytes} of metadata)")
    print("steps (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in r.step_s.items()))
    print(f"up-to-date poll: {r.up_to_date_s:.3f} s, {r.up_to_date_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
