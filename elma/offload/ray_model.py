"""The model inside a Ray Serve replica: a ``RuntimeAnswerer`` whose concurrent questions ``@serve.batch`` groups into
one ``Runtime.ask_batch``, or that answers one question at a time.

Used by both topologies of ``elma.offload.ray_engine``: by the model deployment (split: the ingress awaits it through a
handle) and by the ingress deployment itself (combined: one process per request less). Server side only; imports ray.
"""

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ray import serve


@dataclass(frozen=True)
class ModelSpec:
    """What a replica loads and how it answers; pickled to the replicas (paths absolute)."""

    model: Optional[str]  # bundle or model folder; None: the shipped reference model
    backend: Optional[str]  # runtime backend; None: the runtime's default for the path
    intra_op_threads: int  # ONNX Runtime threads inside one op, per replica
    batching: bool  # group concurrent questions into one Runtime.ask_batch
    max_batch_size: int  # questions per batch at most
    batch_wait_timeout_s: float  # how long a batch's first question waits for company (seconds)
    capacity: Optional[int] = None  # questions this replica holds at once, beyond: ModelFull; None: Ray Serve limits them


class ModelFull(Exception):
    """The replica already holds ``capacity`` questions (the combined topology's back-pressure: a JSON 503)."""


class BatchedModel:
    """One copy of the full-depth model. ``answer`` is the only entry point; batching is chosen at start-up.

    A batch is answered in a worker thread, so that the replica's event loop keeps taking requests (and gathering the
    next batch) meanwhile; ``@serve.batch`` runs one batch at a time (``max_concurrent_batches=1``).
    """

    def __init__(self, spec: ModelSpec):
        from elma.offload.answerer import RuntimeAnswerer

        self.answerer = RuntimeAnswerer.open(spec.model, spec.backend, intra_op_threads=spec.intra_op_threads)
        self.model, self.num_layers = self.answerer.model, self.answerer.num_layers
        self.batching = spec.batching
        self.capacity = spec.capacity
        self.answer_batch.set_max_batch_size(spec.max_batch_size)
        self.answer_batch.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)
        self._one_at_a_time = asyncio.Lock()  # without batching: the runtime answers one question at a time
        self.in_flight = 0  # questions admitted and not yet answered
        self.runs = 0  # Runtime calls (a batch counts once)
        self.answered = 0  # questions answered
        self.largest_batch = 0  # most questions one Runtime call answered

    def describe(self) -> Dict[str, Any]:
        return {"model": self.model, "num_layers": self.num_layers, "pid": os.getpid(), "runs": self.runs,
                "answered": self.answered, "largest_batch": self.largest_batch}

    async def answer(self, question: str, context: str) -> Dict[str, Any]:
        """The reply of ``RuntimeAnswerer``.

        Raises:
            ValueError: a question or passage the runtime refuses (the app answers 422).
            ModelFull: ``capacity`` questions are already here (the app answers 503 with Retry-After).
        """
        if self.capacity is not None and self.in_flight >= self.capacity:
            raise ModelFull(f"this replica holds {self.capacity} questions already")
        self.in_flight += 1
        try:
            if self.batching:
                reply = await self.answer_batch((question, context))
            else:
                async with self._one_at_a_time:
                    reply = await asyncio.to_thread(self._answer_one, question, context)
        finally:
            self.in_flight -= 1
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def _answer_one(self, question: str, context: str) -> Dict[str, Any]:
        self.runs, self.answered, self.largest_batch = self.runs + 1, self.answered + 1, max(self.largest_batch, 1)
        try:
            return self.answerer(question, context)
        except ValueError as err:
            return {"error": str(err)}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # replaced in __init__ by the configured values
    async def answer_batch(self, items: List[Tuple[str, str]]) -> List[Dict[str, Any]]:
        return await asyncio.to_thread(self._answer_many, items)

    def _answer_many(self, items: List[Tuple[str, str]]) -> List[Dict[str, Any]]:
        try:
            replies = self.answerer.answer_batch(items)
        except ValueError:  # one bad row refuses the whole batch: answer one by one so that only it fails
            return [self._answer_one(q, c) for q, c in items]
        self.runs, self.answered = self.runs + 1, self.answered + len(items)
        self.largest_batch = max(self.largest_batch, len(items))
        return replies

    def close(self) -> None:
        self.answerer.close()
