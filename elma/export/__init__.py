"""Export: a trained multi-exit model -> a verified bundle of per-layer ONNX graphs (and TensorRT engines).

``export/`` builds, ``runtime/`` only loads (``elma.runtime.bundle.load_bundle``).
Nothing heavy is imported here: torch, onnx, onnxruntime and tensorrt are
imported inside the functions that need them.

Modules: ``specs`` (graph specs and ``ExportConfig``, as data), ``onnx_export``
(one step -> one ONNX file), ``precision`` (fp16, int8), ``weights`` (one shared
weight file), ``verify`` (ONNX Runtime vs PyTorch), ``bundle_writer``
(``export_bundle``), ``tensorrt_build`` (``build_engines``).
"""
