"""trtquant: quantization and calibration workbench for TensorRT deployment.

The repository root is the ``trtquant`` package (see pyproject.toml): its sub-packages
``quant``, ``calibrators``, ``datasets`` and ``reports`` are imported as ``trtquant.<name>``
so that our ``datasets`` folder never shadows the PyPI ``datasets`` package.
"""

__version__ = "0.1.0"
