"""The decoder shared by the grid-based fields: a ReLU MLP, bias-free by default like tiny-cuda-nn's FullyFusedMLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INFERENCE_BLOCK_ROWS = 4096
"""Rows per block when one thread evaluates without gradients. Narrow layers are memory bound: a block whose
activations stay in the core's cache decodes 2.5-3.7x faster on CPU than one pass over a large batch (measured
for 16-128 wide layers, 262k points, 2 threads). At the default 65,536-point chunk the gain is small.

With several threads the rows are NOT blocked: every small matmul and ReLU opens an OpenMP parallel region, and
libgomp's threads spin between regions. While one other process keeps a core busy, a spinning thread holds
the CPU its partner needs, so each of the ~100 regions of a blocked chunk waits for a scheduler time slice: 20x
slower (0.09 vs 2.1 M points/s for an APMGSRN). One matmul per layer and chunk opens 5; waiting threads that
sleep (``OMP_WAIT_POLICY=PASSIVE``, set by :mod:`srn_core`) do the rest. See docs/performance.md."""


class MLP(nn.Sequential):
    """``in -> width`` (ReLU), ``n_hidden_layers - 1`` x ``width -> width`` (ReLU), ``width -> out`` (no activation).

    ``n_hidden_layers`` counts the hidden layers as tiny-cuda-nn does, so there are ``n_hidden_layers + 1``
    weight matrices. Weights are Xavier-normal initialised (the APMGSRN choice); biases, when enabled, start at 0.
    """

    def __init__(self, n_in: int, n_out: int = 1, width: int = 64, n_hidden_layers: int = 2, bias: bool = False):
        layers: list[nn.Module] = []
        widths = [n_in] + [width] * n_hidden_layers
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_out, bias=bias))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_row_blocks(x.shape[0]):
            return self.forward_blocked(x)
        return super().forward(x)

    @staticmethod
    def uses_row_blocks(n_rows: int) -> bool:
        """Whether :meth:`forward` evaluates ``n_rows`` in cache-sized row blocks: only without autograd (which
        needs the whole batch) and on one thread (see :data:`INFERENCE_BLOCK_ROWS` for why not with several)."""
        return not torch.is_grad_enabled() and n_rows > INFERENCE_BLOCK_ROWS and torch.get_num_threads() == 1

    def forward_blocked(self, x: torch.Tensor) -> torch.Tensor:
        """The same layers applied to one cache-sized block of rows at a time (rows are independent); no autograd."""
        linears = self.linears
        out = x.new_empty(x.shape[0], linears[-1].out_features)
        for start in range(0, x.shape[0], INFERENCE_BLOCK_ROWS):
            h = x[start:start + INFERENCE_BLOCK_ROWS]
            for layer in linears[:-1]:
                h = F.linear(h, layer.weight, layer.bias).relu_()
            out[start:start + INFERENCE_BLOCK_ROWS] = F.linear(h, linears[-1].weight, linears[-1].bias)
        return out

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    @staticmethod
    def count(n_in: int, n_out: int = 1, width: int = 64, n_hidden_layers: int = 2, bias: bool = False) -> int:
        """Parameter count of such an MLP without building it (used to fit a budget)."""
        widths = [n_in] + [width] * n_hidden_layers + [n_out]
        return sum(a * b + (b if bias else 0) for a, b in zip(widths[:-1], widths[1:]))
