"""ELMA: early-exit offloading for embedded question answering."""

from elma.errors import BundleError, DataError, ElmaError, EngineLoadError, ExportError, ModelLoadError, TensorRTUnavailable

__version__ = "0.1.0"

__all__ = ["BundleError", "DataError", "ElmaError", "EngineLoadError", "ExportError", "ModelLoadError", "TensorRTUnavailable",
           "__version__"]
