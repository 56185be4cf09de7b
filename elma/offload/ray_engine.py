"""``elma-serve --engine ray``: the same FastAPI app served through Ray Serve, in one of two topologies.

    split (default):  HTTP proxy -> ElmaIngress (1 replica: the app of ``elma.offload.app``; tokens, rate limit, body
                      checks, JSON errors, record store) -> ElmaModel (N replicas, or autoscaled: the full-depth
                      ``Runtime``; /v1/answer requests batched into ``Runtime.ask_batch`` by ``@serve.batch``)
    combined:         HTTP proxy -> ElmaServer (N replicas, or autoscaled: each the app, a record store connection and
                      its own ``Runtime``, batching its /v1/answer requests the same way): one process hop less

Both keep the contract of the uvicorn engine (same app, same checks, same store); only the answerer differs:
``HandleAnswerer`` awaits the model deployment's handle (split), ``LocalAnswerer`` the replica's own ``BatchedModel``
(combined). Back-pressure, split: a model replica holds at most ``max_ongoing_requests`` requests and the ingress queues
at most ``max_queued_requests`` more; beyond that Ray Serve raises ``BackPressureError``, which becomes our JSON 503 with
``Retry-After`` (as does a replica that died, until Ray Serve has replaced it). The ingress itself queues without limit
(its work is small), so a client never meets Ray's own plain-text 503. Combined: Ray Serve's limits are lifted the same
way and each replica admits ``max_ongoing_requests + max_queued_requests`` questions, refusing more with the same JSON
503; each replica keeps its own per-device rate limit, at rate / N (``per_replica_limits``).

Records are written by the ingress replicas only, through ``RecordStore`` (``INSERT ... ON CONFLICT DO NOTHING``,
acknowledged after commit), so a record is stored once whatever replica dies or is retried.

Server side only (Python 3.10+, the ``serve`` extra with ``ray[serve]``); this module imports ray at load time.
"""

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from ray import serve
from ray.serve.exceptions import BackPressureError

from elma.offload.app import ApiError, create_app
from elma.offload.config import RayConfig, ServeConfig
from elma.offload.ray_model import BatchedModel, ModelFull, ModelSpec
from elma.offload.timing import ServerTiming, timed

logger = logging.getLogger(__name__)

APP_NAME = "elma"
MODEL_DEPLOYMENT = "ElmaModel"
INGRESS_DEPLOYMENT = "ElmaIngress"
COMBINED_DEPLOYMENT = "ElmaServer"  # the combined topology's only deployment: ingress and model in one replica


@serve.deployment(name=MODEL_DEPLOYMENT)
class ModelReplica:
    """Split topology: one copy of the full-depth model, awaited by the ingress through its handle."""

    def __init__(self, spec: ModelSpec):
        self.model = BatchedModel(spec)

    def describe(self) -> Dict[str, Any]:
        return self.model.describe()

    async def answer(self, question: str, context: str) -> Dict[str, Any]:
        """Raises ValueError for a question or passage the runtime refuses (the ingress answers 422)."""
        return await self.model.answer(question, context)


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
            async with timed("model"):
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


class LocalAnswerer:
    """Combined topology: the app's answerer is the model of its own replica (no handle, no second process)."""

    def __init__(self, model: BatchedModel, retry_after_s: int):
        self.model = model
        self.retry_after_s = retry_after_s

    async def answer_async(self, question: str, context: str) -> Dict[str, Any]:
        try:
            async with timed("model"):
                return await self.model.answer(question, context)  # ValueError: the app answers 422
        except ModelFull as err:
            raise ApiError(503, "overloaded", f"{err}; retry in {self.retry_after_s} s",
                           {"Retry-After": str(self.retry_after_s)}) from err

    async def describe(self) -> Dict[str, Any]:
        return {"model": self.model.model, "num_layers": self.model.num_layers}


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class Ingress:
    """The HTTP side: ``create_app``; the record store opens in this replica.

    ``model`` is the model deployment's handle (split topology: ``HandleAnswerer``) or a ``ModelSpec`` that this
    replica loads itself (combined topology: ``LocalAnswerer``).
    """

    def __init__(self, model, config: ServeConfig, tokens: Dict[str, str], retry_after_s: int, server_timing: bool):
        from elma.offload.store import RecordStore

        self.model = BatchedModel(model) if isinstance(model, ModelSpec) else None
        answerer = (LocalAnswerer(self.model, retry_after_s) if self.model is not None
                    else HandleAnswerer(model, retry_after_s))
        self.store = RecordStore(config.db_url)
        app = create_app(config, answerer, self.store, tokens)
        self._elma_app = ServerTiming(app) if server_timing else app

    def describe(self) -> Dict[str, Any]:
        return self.model.describe() if self.model is not None else {"pid": os.getpid()}

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
    spec = ModelSpec(model, config.backend, ray_config.intra_op_threads, ray_config.batching, ray_config.max_batch_size,
                     ray_config.batch_wait_timeout_s)
    replicas: Dict[str, Any] = {"num_replicas": ray_config.replicas}
    if ray_config.max_replicas is not None:
        replicas = {"autoscaling_config": {"min_replicas": ray_config.min_replicas, "max_replicas": ray_config.max_replicas,
                                           "target_ongoing_requests": max(1, ray_config.max_batch_size // 2)}}
    model_cpus = {"ray_actor_options": {"num_cpus": ray_config.replica_cpus}}
    if ray_config.topology == "combined":
        # Ray Serve's own limits stay out of the way (its refusals are plain text); each replica admits
        # max_ongoing + max_queued questions and refuses more with our JSON 503 (ModelFull). The proxy routes to the
        # replica with fewer ongoing requests of two, so the other endpoints are spread too.
        spec = replace(spec, capacity=ray_config.max_ongoing_requests + ray_config.max_queued_requests)
        server = Ingress.options(name=COMBINED_DEPLOYMENT, max_ongoing_requests=4096, max_queued_requests=-1,
                                 **replicas, **model_cpus)
        return server.bind(spec, per_replica_limits(config, ray_config), tokens, ray_config.retry_after_s,
                           ray_config.server_timing)
    model_app = ModelReplica.options(max_ongoing_requests=ray_config.max_ongoing_requests,
                                     max_queued_requests=ray_config.max_queued_requests, **replicas,
                                     **model_cpus).bind(spec)
    # The ingress's own queue is unbounded (-1) and deep: refusals come from the model's queue, as our JSON 503.
    ingress = Ingress.options(num_replicas=1, max_ongoing_requests=4096, max_queued_requests=-1,
                              ray_actor_options={"num_cpus": 0})
    return ingress.bind(model_app, config, tokens, ray_config.retry_after_s, ray_config.server_timing)


def per_replica_limits(config: ServeConfig, ray_config: RayConfig) -> ServeConfig:
    """The per-device rate limit of one combined replica: each keeps its own token buckets, and Serve's proxy spreads
    a device's requests over the replicas, so each gets rate / N and burst / N (N: the fixed replica count, or the
    autoscaling minimum: with more replicas up, a device may get up to max / min times its rate)."""
    n = ray_config.replicas if ray_config.max_replicas is None else max(1, ray_config.min_replicas or 0)
    return replace(config, rate_per_s=config.rate_per_s / n, burst=max(1, config.burst // n))


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
    for deployment in serve.status().applications[APP_NAME].deployments:
        handle = serve.get_deployment_handle(deployment, APP_NAME)
        seen = {handle.describe.remote().result(timeout_s=60)["pid"] for _ in range(attempts)}
        pids[deployment] = sorted(seen)
    return pids
