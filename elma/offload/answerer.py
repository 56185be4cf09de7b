"""The full-depth model behind ``/v1/answer``."""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


class RuntimeAnswerer:
    """The full-depth model behind ``/v1/answer``: ``Runtime.ask`` (or ``ask_batch``) with the no-exit policy."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.model = str(runtime.info.path)
        self.num_layers = runtime.num_layers

    @classmethod
    def open(cls, model: Optional[str], backend: Optional[str] = None,
             intra_op_threads: Optional[int] = None) -> "RuntimeAnswerer":
        """Load ``model`` (None: the shipped reference model).

        Args:
            intra_op_threads: ONNX Runtime threads inside one op (None: ORT's default, one per core). Give each of
                N replicas on C cores about C/N, so that replicas do not fight over the cores.
        """
        from elma.paths import default_model_dir
        from elma.runtime.engine import Runtime, is_bundle

        path = Path(model) if model else default_model_dir()
        options = {}
        if backend is None and not is_bundle(path):
            backend = "torch"
        if intra_op_threads is not None and (backend or "onnxruntime") == "onnxruntime":
            from elma.runtime.backends import OrtOptions

            options["options"] = OrtOptions(intra_op_threads=intra_op_threads)
        return cls(Runtime.open(path, backend=backend, policy="none", **options))

    @staticmethod
    def reply(a) -> Dict[str, Any]:
        return {"text": a.text, "no_answer": a.no_answer, "exit_layer": a.exit_layer, "num_layers": a.num_layers,
                "latency_ms": a.latency_ms}

    def __call__(self, question: str, context: str) -> Dict[str, Any]:
        return self.reply(self.runtime.ask(question, context))

    def answer_batch(self, items: Sequence[Tuple[str, str]]) -> List[Dict[str, Any]]:
        """Answer many questions in one ``Runtime.ask_batch``; ``latency_ms`` is the whole batch's.

        Raises:
            ValueError: a question or passage the runtime refuses (the whole batch is refused).
        """
        return [self.reply(a) for a in self.runtime.ask_batch(list(items))]

    def close(self) -> None:
        self.runtime.close()
