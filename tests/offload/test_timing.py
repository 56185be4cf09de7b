"""The Server-Timing middleware (``elma-serve --engine ray --server-timing``) on a plain FastAPI app, no Ray."""

import asyncio

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from elma.offload.timing import ServerTiming, parse_server_timing, timed  # noqa: E402


def make_app():
    import contextlib

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    started = []

    @contextlib.asynccontextmanager
    async def lifespan(app):  # the lifespan passes through the middleware (Ray Serve runs it on the wrapped app)
        started.append(True)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/model")
    async def model():
        async with timed("model"):
            await asyncio.sleep(0.03)
        return {"ok": True}

    @app.get("/plain")
    async def plain():
        return {"ok": True}

    @app.get("/fails")
    async def fails():
        async with timed("model"):
            await asyncio.sleep(0.01)
        return JSONResponse({"error": {"code": "overloaded"}}, status_code=503)

    return app, started


def test_the_header_times_the_app_and_what_it_awaited():
    from fastapi.testclient import TestClient

    app, started = make_app()
    with TestClient(ServerTiming(app)) as client:
        timing = parse_server_timing(client.get("/model").headers["server-timing"])
        assert list(timing) == ["app", "model"] and 30 <= timing["model"] <= timing["app"], timing
        plain = parse_server_timing(client.get("/plain").headers["server-timing"])
        assert list(plain) == ["app"]  # a request's metrics are its own, not the previous request's
        refused = client.get("/fails")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        assert set(parse_server_timing(refused.headers["server-timing"])) == {"app", "model"}
    assert started == [True]


def test_timed_outside_the_middleware_is_a_no_op():
    async def outside():
        async with timed("model"):
            return 1

    assert asyncio.run(outside()) == 1


def test_parse_server_timing():
    assert parse_server_timing("app;dur=12.5, model;desc=\"m\";dur=3") == {"app": 12.5, "model": 3.0}
    assert parse_server_timing("cache, db;dur=x, ;dur=1") == {}
