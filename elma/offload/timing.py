"""Where a request's time goes inside the server: a ``Server-Timing`` response header (W3C Server Timing).

    app = ServerTiming(create_app(...))        # every HTTP response gains  Server-Timing: app;dur=12.3, model;dur=10.1
    async with timed("model"): ...             # inside the app: adds a metric to the current request's header

``app`` is the time from the request reaching the wrapped ASGI app to its response starting (ms); ``model`` the time an
answer awaited the model (another replica's handle, or the batch queue of this one). Both are measured within one
process, so no clocks are compared across processes. Off unless ``elma-serve --engine ray --server-timing`` (a
debugging aid for ``benchmarks/offload_profile.py``; it tells clients how long the model took).
"""

import contextlib
import time
from contextvars import ContextVar
from typing import Dict, Optional

# The metrics of the request being handled (None outside a ServerTiming app). A dict shared by the request's task and
# the tasks it starts (they copy the context, not the dict).
_metrics: ContextVar[Optional[Dict[str, float]]] = ContextVar("elma_server_timing", default=None)


@contextlib.asynccontextmanager
async def timed(name: str):
    """Time the block into the current request's ``Server-Timing`` as ``name`` (no-op outside a ServerTiming app)."""
    metrics = _metrics.get()
    began_s = time.perf_counter()
    try:
        yield
    finally:
        if metrics is not None:
            metrics[name] = metrics.get(name, 0.0) + (time.perf_counter() - began_s) * 1000.0


class ServerTiming:
    """ASGI middleware: adds ``Server-Timing: app;dur=MS[, NAME;dur=MS ...]`` to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics: Dict[str, float] = {}
        token = _metrics.set(metrics)
        began_s = time.perf_counter()

        async def send_with_timing(message):
            if message["type"] == "http.response.start":
                parts = [("app", (time.perf_counter() - began_s) * 1000.0), *metrics.items()]
                value = ", ".join(f"{name};dur={ms:.2f}" for name, ms in parts)
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", value.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            _metrics.reset(token)

    def __getattr__(self, name):  # the wrapped app's attributes (FastAPI's routes, openapi) stay reachable
        return getattr(self.app, name)


def parse_server_timing(value: str) -> Dict[str, float]:
    """``"app;dur=12.3, model;dur=10.1"`` -> ``{"app": 12.3, "model": 10.1}`` (metrics without a duration are left out)."""
    metrics: Dict[str, float] = {}
    for part in value.split(","):
        name, *params = [p.strip() for p in part.split(";")]
        for param in params:
            key, _, number = param.partition("=")
            if name and key.strip().lower() == "dur":
                try:
                    metrics[name] = float(number)
                except ValueError:
                    pass
    return metrics
