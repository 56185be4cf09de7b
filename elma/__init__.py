"""ELMA: early-exit offloading for embedded question answering."""

from elma.errors import DataError, ElmaError, ModelLoadError

__version__ = "0.1.0"

__all__ = ["DataError", "ElmaError", "ModelLoadError", "__version__"]
