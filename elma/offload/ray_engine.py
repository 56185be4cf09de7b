"""``elma-serve --engine ray``: the same FastAPI app served through Ray Serve, the model in its own deployment.

    ElmaIngress (1 replica: the app of ``elma.offload.app``; tokens, rate limit, body checks, JSON errors, record store)
        -> ElmaModel (N replicas, or autoscaled: the full-depth ``Runtime``; /v1/answer requests batched into
           ``Runtime.ask_batch`` by ``@serve.batch``)

The ingress keeps the contract of the uvicorn engine (same app, same checks, same store); only the answerer differs:
``HandleAnswerer`` awaits the model deployment's handle. Back-pressure: a model replica holds at most
``max_ongoing_requests`` requests and the ingress queues at most ``max_queued_requests`` more; beyond that Ray Serve
raises ``BackPressureError``, which becomes our JSON 503 with ``Retry-After`` (as does a replica that died, until Ray
Serve has replaced it). The ingress itself queues without limit (its work is small), so a client never meets Ray's own
plain-text 503.

Records are written by the ingress only, through ``RecordStore`` (``INSERT ... ON CONFLICT DO NOTHING``, acknowledged
after commit), so a record is stored once whatever replica dies or is retried.

Server side only (Python 3.10+, the ``serve`` extra with ``ray[serve]``); this module imports ray at load time.
"""

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ray import serve
from ray.serve.exceptions import BackPressureError

from elma.offload.app import ApiError, create_app
from elma.offload.config import RayConfig, ServeConfig

logger = logging.getLogger(__name__)

APP_NAME = "elma"
MODEL_DEPLOYMENT = "ElmaModel"
INGRESS_DEPLOYMENT = "ElmaIngress"


@serve.deployment(name=MODEL_DEPLOYMENT)
class ModelReplica:
    """One copy of the full-depth model. ``answer`` is the only entry point; batching is chosen at start-up."""

    def __init__(self, model: Optional[str], backend: Optional[str], intra_op_threads: int, batching: bool,
                 max_batch_size: int, batch_wait_timeout_s: float):
        from elma.offload.answerer import RuntimeAnswerer

        self.answerer = RuntimeAnswerer.open(model, backend, intra_op_threads=intra_op_threads)
        self.batching = batching
        self.answer_batch.set_max_batch_size(max_batch_size)
        self.answer_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._one_at_a_time = asyncio.Lock()  # without batching: the runtime answers one question at a time
        self.runs = 0  # Runtime calls (a batch counts once)
        self.answered = 0  # questions answered

    def describe(self) -> Dict[str, Any]:
        return {"model": self.answerer.model, "num_layers": self.answerer.num_layers, "pid": os.getpid(), "runs": self.runs,
                "answered": self.answered}

    async def answer(self, question: str, context: str) -> Dict[str, Any]:
        """Raises ValueError for a question or passage the runtime refuses (the ingress answers 422)."""
        if self.batching:
            reply = await self.answer_batch((question, context))
        else:
            async with self._one_at_a_time:
                reply = await asyncio.to_thread(self._answer_one, question, context)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def _answer_one(self, question: str, context: str) -> Dict[str, Any]:
        self.runs, self.answered = self.runs + 1, self.answered + 1
        try:
            return self.answerer(question, context)
        except ValueError as err:
            return {"error": str(err)}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # replaced in __init__ by the configured values
    async def answer_batch(self, items: List[Tuple[str, str]]) -> List[Dict[str, Any]]:
        # One batch at a time (serve.batch's max_concurrent_batches=1); in a thread so that the event loop keeps
        # gathering the next batch meanwhile.
        return await asyncio.to_thread(self._answer_many, items)

    def _answer_many(self, items: List[Tuple[str, str]]) -> List[Dict[str, Any]]:
        try:
            replies = self.answerer.answer_batch(items)
            self.runs, self.answered = self.runs + 1, self.answered + len(items)
            return replies
        except ValueError:  # one bad row refuses the whole batch: answer one by one so that only it fails
            return [self._answer_one(q, c) for q, c in items]


class HandleAnswerer:
    """The app's answerer in the ingress: awaits the model deployment, and turns Ray's failures into our 503s."""

    def __init__(self, handle, retry_after_s: int):
        self.handle = handle
        self.retry_after_s = retry_after_s
        self._described: Optional[Dict[str, Any]] = None

    def _unavailable(self, code: str, message: str) -> ApiError:
        return ApiError(503, code, f"{message}; retry in {self.retry_after_s} s", {"Retry-After": str(self.retry_after_s)})

    async def answer_async(self, question: str, context: str) -> Dict[str, Any]:
        try:
            return await self.handle.answer.remote(question, context)
        except BackPressureError as err:
            raise self._unavailable("overloaded", "the model replicas are full") from err
        except ValueError as err:  # the replica's ValueError, wrapped by Ray (RayTaskError(ValueError)): its message only
            raise ApiError(422, "invalid_request", str(getattr(err, "cause", None) or err)) from err
        except Exception as err:  # a replica died mid-request (ActorDiedError), none is up yet (DeploymentUnavailableError)
            logger.warning("model replica failed: %s: %s", type(err).__name__, err)
            raise self._unavailable("replica_unavailable", f"a model replica failed ({type(err).__name__})") from err

    async def describe(self) -> Dict[str, Any]:
        if self._described is None:
            info = await self.handle.describe.remote()
            self._described = {"model": info["model"], "num_layers": info["num_layers"]}
        return self._described


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class Ingress:
    """The HTTP side: ``create_app`` with a ``HandleAnswerer``; the record store opens in this replica."""

    def __init__(self, model_handle, config: ServeConfig, tokens: Dict[str, str], retry_after_s: int):
        from elma.offload.store import RecordStore

        self.store = RecordStore(config.db_url)
        self._elma_app = create_app(config, HandleAnswerer(model_handle, retry_after_s), self.store, tokens)

    def describe(self) -> Dict[str, Any]:
        return {"pid": os.getpid()}

    def __serve_build_asgi_app__(self):
        return self._elma_app

    def __del__(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def build_application(config: ServeConfig, ray_config: RayConfig, tokens: Dict[str, str]):
    """The bound Ray Serve application (``serve.run`` it). Paths are made absolute: replicas have another cwd."""
    model = str(Path(config.model).resolve()) if config.model else None
    db_url = absolute_sqlite_url(config.db_url)
    config = ServeConfig(**{**config.__dict__, "model": model, "db_url": db_url})
    options: Dict[str, Any] = {
        "max_ongoing_requests": ray_config.max_ongoing_requests,
        "max_queued_requests": ray_config.max_queued_requests,
        "ray_actor_options": {"num_cpus": ray_config.replica_cpus},
    }
    if ray_config.max_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": ray_config.min_replicas, "max_replicas": ray_config.max_replicas,
                                         "target_ongoing_requests": max(1, ray_config.max_batch_size // 2)}
    else:
        options["num_replicas"] = ray_config.replicas
    model_app = ModelReplica.options(**options).bind(model, config.backend, ray_config.intra_op_threads,
                                                     ray_config.batching, ray_config.max_batch_size,
                                                     ray_config.batch_wait_timeout_s)
    # The ingress's own queue is unbounded (-1) and deep: refusals come from the model's queue, as our JSON 503.
    ingress = Ingress.options(num_replicas=1, max_ongoing_requests=4096, max_queued_requests=-1,
                              ray_actor_options={"num_cpus": 0})
    return ingress.bind(model_app, config, tokens, ray_config.retry_after_s)


def absolute_sqlite_url(db_url: str) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db`` (a replica's cwd is not ours); other URLs unchanged."""
    prefix = "sqlite:///"
    if db_url.startswith(prefix) and not db_url.startswith(prefix + "/") and db_url != prefix + ":memory:":
        return prefix + str(Path(db_url[len(prefix):]).resolve())
    return db_url


def start(config: ServeConfig, ray_config: RayConfig, tokens: Dict[str, str], log_to_driver: bool = False) -> None:
    """Start (or join) Ray, start Serve's HTTP proxy on ``config.host:port``, deploy, and return once healthy.

    Raises:
        OffloadError: Ray or the deployment could not start (the model failed to load in a replica, the port is
            taken, the cluster is unreachable).
    """
    import ray

    from elma.errors import OffloadError

    try:
        if ray_config.address is not None:
            ray.init(address=ray_config.address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
        else:
            # A Ray of our own on this machine: enough CPUs declared for every replica (Ray reserves, the OS shares),
            # a small object store (requests are small), no dashboard. address="local": a new instance even where
            # RAY_ADDRESS or a cluster file left in /tmp/ray by an earlier Ray (running or not) points elsewhere.
            cpus = max(os.cpu_count() or 1, int(ray_config.most_replicas * ray_config.replica_cpus + 0.999))
            ray.init(address="local", num_cpus=cpus, object_store_memory=ray_config.object_store_mb * 1024 * 1024, include_dashboard=False,
                     log_to_driver=log_to_driver, logging_level=logging.WARNING)
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_application(config, ray_config, tokens), name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as err:
        stop(joined=ray_config.address is not None)
        raise OffloadError(f"Ray Serve did not start ({type(err).__name__}: {str(err).strip().splitlines()[-1][:300]})") from err


def stop(joined: bool = False) -> None:
    """Tear down what ``start`` made: Serve and the Ray we started, or only our application on a cluster we joined
    (other applications and Serve's HTTP proxy stay)."""
    import ray

    try:
        if ray.is_initialized():
            if joined:
                serve.delete(APP_NAME)
            else:
                serve.shutdown()
    finally:
        ray.shutdown()


def replica_pids(attempts: int = 20) -> Dict[str, List[int]]:
    """Process ids of the replicas, per deployment, asked through their handles (``describe``); for fault runs.

    Ray's state API (``ray.util.state.list_actors``) would need the dashboard, which ``start`` leaves out to save
    memory. Each call reaches one replica chosen by Serve's router, so several calls gather the pids of all of them.
    """
    pids: Dict[str, List[int]] = {}
    for deployment in (MODEL_DEPLOYMENT, INGRESS_DEPLOYMENT):
        handle = serve.get_deployment_handle(deployment, APP_NAME)
        seen = {handle.describe.remote().result(timeout_s=60)["pid"] for _ in range(attempts)}
        pids[deployment] = sorted(seen)
    return pids
