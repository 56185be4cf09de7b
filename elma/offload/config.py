"""``ServeConfig``: the offload server's settings (``elma-serve``'s flags map 1:1 onto its fields)."""

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ServeConfig:
    """``elma-serve``'s settings; the command-line flags map 1:1 onto these fields."""

    model: Optional[str] = None  # bundle or ELMA model folder; None: the shipped reference model
    tokens_file: Optional[str] = None  # device tokens (hashed), see ``load_tokens``; required to serve
    host: str = "127.0.0.1"  # loopback by default: expose on purpose, behind TLS (a reverse proxy)
    port: int = 8000
    db_url: str = "sqlite:///elma-records.sqlite3"  # SQLAlchemy URL; PostgreSQL: postgresql+psycopg://user@host/db
    backend: Optional[str] = None  # runtime backend (default: onnxruntime for bundles, torch for model folders)
    max_body_bytes: int = 2_200_000  # largest request body; a 1 MB passage (the device's limit) as JSON fits
    rate_per_s: float = 20.0  # sustained requests per second per device (token bucket refill)
    burst: int = 40  # requests a device may send at once (bucket size)
    releases_dir: Optional[str] = None  # release repository (elma publish) served under /v1/releases/; None: not served

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535 (got {self.port})")
        if self.max_body_bytes < 1024 or self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError(f"max_body_bytes must be >= 1024, rate_per_s > 0, burst >= 1 (got {self.max_body_bytes}, "
                             f"{self.rate_per_s}, {self.burst})")


TOPOLOGIES = ("split", "combined")  # elma.offload.ray_engine's docstring draws both


@dataclass(frozen=True)
class RayConfig:
    """``elma-serve --engine ray``'s settings (``elma.offload.ray_engine``); flags map 1:1 onto these fields."""

    topology: str = "split"  # split: ingress (1 replica) -> model deployment (N); combined: N replicas of ingress+model
    address: Optional[str] = None  # existing Ray cluster ("auto", "ray://host:10001", "host:6379"); None: start one here
    replicas: int = 1  # model replicas (fixed); ignored when min/max_replicas autoscale
    min_replicas: Optional[int] = None  # autoscaling lower bound; with max_replicas, replaces `replicas`
    max_replicas: Optional[int] = None  # autoscaling upper bound
    batching: bool = True  # group concurrent /v1/answer requests into one Runtime.ask_batch (@serve.batch)
    max_batch_size: int = 8  # questions per batch at most
    batch_wait_timeout_s: float = 0.005  # how long a first question waits for company (seconds)
    max_ongoing_requests: int = 16  # requests one model replica holds at once (>= max_batch_size)
    max_queued_requests: int = 64  # requests waiting for a model replica (combined: per replica); more: 503, Retry-After
    intra_op_threads: int = 1  # ONNX Runtime threads per replica: cores / replicas (1 on a 2-core box with 2 replicas)
    replica_cpus: float = 1.0  # CPUs Ray reserves per model replica (scheduling only)
    object_store_mb: int = 200  # object store of a Ray started here (MB); unused with `address`
    retry_after_s: int = 1  # Retry-After of the 503 an overloaded or recovering model replica gives
    server_timing: bool = False  # add a Server-Timing header (app and model ms) to every response; for profiling

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)} (got {self.topology!r})")
        if self.replicas < 1 or self.max_batch_size < 1 or self.batch_wait_timeout_s < 0 or self.intra_op_threads < 0:
            raise ValueError(f"replicas and max_batch_size must be >= 1, batch_wait_timeout_s and intra_op_threads >= 0 "
                             f"(got {self.replicas}, {self.max_batch_size}, {self.batch_wait_timeout_s}, "
                             f"{self.intra_op_threads})")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas or (self.max_replicas or 1) < 1:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1 "
                             f"(got {self.min_replicas}, {self.max_replicas})")
        if self.max_ongoing_requests < (self.max_batch_size if self.batching else 1) or self.max_queued_requests < 1:
            raise ValueError(f"max_ongoing_requests must be >= max_batch_size and max_queued_requests >= 1 "
                             f"(got {self.max_ongoing_requests}, {self.max_batch_size}, {self.max_queued_requests})")
        if self.object_store_mb < 80 or self.replica_cpus < 0 or self.retry_after_s < 1:
            raise ValueError(f"object_store_mb must be >= 80 (Ray's minimum), replica_cpus >= 0, retry_after_s >= 1 "
                             f"(got {self.object_store_mb}, {self.replica_cpus}, {self.retry_after_s})")

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas


def shared_store_problem(db_url: str, ray: RayConfig) -> Optional[str]:
    """Why ``db_url`` cannot be the store of this deployment, or None. A SQLite file is one machine's and one
    writer's: replicas (on other nodes too) share records only through a database server (PostgreSQL)."""
    if db_url.startswith("sqlite") and ray.most_replicas > 1:
        return (f"a SQLite record store serves one replica only (got up to {ray.most_replicas}); use PostgreSQL: "
                f"--db postgresql+psycopg://USER@HOST/DB")
    return None
