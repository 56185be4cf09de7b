"""Offloading: unsolved questions go to a server running the full model; the device keeps an error dataset.

Device side (Python 3.8, standard library): ``elma.offload.queue`` (durable SQLite record queue) and
``elma.offload.client`` (offload decision, deadline, retries, circuit breaker, upload of records).
Server side (FastAPI, SQLAlchemy; the ``serve`` extra): ``elma.offload.server``. Nothing is imported here,
so that importing the device side never pulls in the server's dependencies.
"""
