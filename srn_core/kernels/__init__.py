"""Optional compiled CPU kernels; nothing here is required and importing it imports no compiler.

fused_apmgsrn   APMGSRN inference (grid transforms, trilinear lookups, decoder) as one numba kernel
                (:func:`fused_evaluator`); the PyTorch path of the field stays the reference.
"""

from .fused_apmgsrn import fused_evaluator

__all__ = ["fused_evaluator"]
