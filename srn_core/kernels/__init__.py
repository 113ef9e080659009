"""Optional compiled CPU kernels; nothing here is required and importing it imports no compiler.

fused_apmgsrn   APMGSRN inference (grid transforms, trilinear lookups, decoder) as one numba kernel
                (:func:`fused_evaluator`); the PyTorch path of the field stays the reference.
fused_training  the compiled parts of a training step (feature lookups and their gradient, the feature density
                and its gradient, ground truth) as autograd functions, used by :mod:`srn_core.training`.
"""

from .fused_apmgsrn import fused_evaluator

__all__ = ["fused_evaluator"]
