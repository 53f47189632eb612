"""The shared vocabulary: errors, value types, file formats and I/O, numerics, metrics, TensorRT
version rules, the target grammar and the runtime (device, precision contexts, optional imports).

Nothing here imports anything else of ours; ``datasets``, ``calibrators`` and ``reports`` import only
this package; ``quant`` builds on it.
"""
