"""APMGSRN: the adaptive multi-grid scene representation network (Wurster et al., VIS 2023).

M small feature grids ``[M, C, D, H, W]`` are placed in the volume by learnable 4x4 transforms; a point is
mapped into every grid's local ``[-1, 1]^3`` frame, features are read trilinearly (zero outside a grid),
concatenated grid-major (column ``g * C + c``) and decoded by a bias-free ReLU MLP. The transforms are moved
only by the feature-density loss, which pulls grid density toward regions of high reconstruction error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Field, checked_grid_shape, require_at_least_one
from .grid_shape import fit_grid_shape
from .mlp import MLP


GRID_INITIALIZATIONS = ("default", "small", "large")
"""The transform initialisations APMGSRN implements (``_initial_transforms``)."""


@dataclass
class APMGSRNConfig:
    n_grids: int = 16
    """Number of feature grids M."""
    n_features: int = 2
    """Features per grid C."""
    grid_shape: tuple[int, int, int] = (32, 32, 32)
    """Feature grid resolution ``(D, H, W)``: D along z, H along y, W along x (``grid_sample`` order)."""
    width: int = 64
    """Neurons per hidden decoder layer."""
    n_hidden_layers: int = 2
    """Hidden decoder layers (tiny-cuda-nn's ``n_hidden_layers``)."""
    input_padding: int = 0
    """Extra decoder inputs fixed to 1.0 (tiny-cuda-nn pads its input to a multiple of 16 this way); 0 for our models.
    Their weights are trained like any other (the peer's code trains and stores them), so they count as parameters."""
    use_bias: bool = False
    """Decoder layers with biases (APMGSRN's ``use_bias`` option; its default and ours is bias-free)."""
    density_exponent: int = 20
    """Exponent 2p of the flat-top Gaussian feature density ``exp(-0.5 * sum(local**2p))`` (p = 10 in the paper)."""
    grid_initialization: str = "default"
    """Transform initialisation, as in the paper's code: "default" (identity + N(0, 0.05) noise: every grid covers
    the volume), "small" (8 x identity + noise + a random shift within the grid's own reach: grids an eighth of
    the volume wide, scattered) or "large" (0.8 x identity + noise: grids a little larger than the volume)."""
    transform_lr_scale: float = 0.025
    """Learning rate of the transforms relative to the grids and decoder. The paper's code sets 0.05 and then
    halves it within 5 steps (a LinearLR quirk), so 0.025 is the rate it actually trains with."""

    def __post_init__(self):
        require_at_least_one(self, ("n_grids", "n_features", "width", "n_hidden_layers"), "APMGSRN")
        self.grid_shape = checked_grid_shape(self.grid_shape, "APMGSRN")
        if self.grid_initialization not in GRID_INITIALIZATIONS:
            raise ValueError(f"APMGSRN grid_initialization must be one of {', '.join(map(repr, GRID_INITIALIZATIONS))},"
                             f" got {self.grid_initialization!r}.")
        if not isinstance(self.use_bias, bool):  # a JSON string "false" would otherwise read as true
            raise ValueError(f"APMGSRN use_bias must be true or false, got {self.use_bias!r}.")


def peer_grid_initialization(option) -> str:
    """The initialisation an APMGSRN ``options.json`` value selects. The peer's code tests for the substrings
    "default", "small", "large" in that order and treats anything else as "default"; its checkpoints store
    the trained transforms, so this only records how the model started."""
    text = str(option)
    return next((name for name in GRID_INITIALIZATIONS if name in text), "default")


def _initial_transforms(n_grids: int, kind: str) -> torch.Tensor:
    """``(n_grids, 4, 4)`` homogeneous transforms for the initialisation ``kind`` (the paper code's three).

    A grid spans local ``[-1, 1]^3``, so a transform scaled by ``s`` makes the grid ``1/s`` of the volume wide;
    "small" then shifts each grid by up to its own scale, i.e. anywhere its centre stays inside the volume.
    """
    scale = {"default": 1.0, "small": 8.0, "large": 0.8}[kind]
    transforms = torch.eye(4).repeat(n_grids, 1, 1) * scale
    transforms[:, :3, :] += torch.randn(n_grids, 3, 4) * 0.05
    if kind == "small":
        diagonal = transforms[:, :3, :3].diagonal(dim1=1, dim2=2)
        transforms[:, :3, 3] += (torch.rand(n_grids, 3) * 2 - 1) * diagonal
    transforms[:, 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    return transforms


class APMGSRN(Field):
    architecture = "apmgsrn"
    Config = APMGSRNConfig
    grid_tensors = ("feature_grids",)
    exact_tensors = ("transforms",)

    def __init__(self, config: APMGSRNConfig = APMGSRNConfig(), value_range=(0.0, 1.0)):
        super().__init__(config, value_range)
        c = config
        self.transforms = nn.Parameter(_initial_transforms(c.n_grids, c.grid_initialization))
        self.feature_grids = nn.Parameter(torch.empty(c.n_grids, c.n_features, *c.grid_shape).uniform_(-1e-4, 1e-4))
        self.decoder = MLP(c.n_grids * c.n_features + c.input_padding, 1, c.width, c.n_hidden_layers, bias=c.use_bias)

    # ---- encoding ------------------------------------------------------------------------------
    def local_coordinates(self, points: torch.Tensor) -> torch.Tensor:
        """Every grid's local coordinates of ``points``: ``(M, N, 3)``; a grid spans local ``[-1, 1]^3``."""
        m = self.config.n_grids
        linear = self.transforms[:, :3, :3].reshape(3 * m, 3)
        shift = self.transforms[:, :3, 3].reshape(3 * m)
        # One (N, 3) x (3, 3M) product: 4x faster on CPU than the equivalent batched einsum.
        local = torch.addmm(shift, points, linear.t())  # (N, 3M), column g*3 + i
        return local.view(-1, m, 3).transpose(0, 1)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """Grid-major features ``(N, M*C)``."""
        m, c = self.config.n_grids, self.config.n_features
        n = points.shape[0]
        # Detached: the reconstruction loss trains grids and decoder; only the density loss moves the transforms.
        local = self.local_coordinates(points).detach()
        feats = F.grid_sample(self.feature_grids, local.reshape(m, 1, 1, n, 3), mode="bilinear",
                              padding_mode="zeros", align_corners=True)  # (M, C, 1, 1, N)
        return feats.reshape(m * c, n).t()

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(points))

    def normalized_with_grids(self, points: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(S, n)`` for ``S`` sets of points ``(S, n, 3)``, set ``s`` read from its own feature
        grids ``grids[s]`` (``(S, M, C, D, H, W)``): a time-varying model's ``S`` times in one pass (one
        ``grid_sample`` over ``S * M`` grids and one decoder call, instead of ``S`` small ones)."""
        m, c = self.config.n_grids, self.config.n_features
        sets, n = points.shape[0], points.shape[1]
        local = self.local_coordinates(points.reshape(-1, 3)).detach()  # (M, S*n, 3); see encode
        local = local.view(m, sets, n, 3).transpose(0, 1).reshape(sets * m, 1, 1, n, 3)
        feats = F.grid_sample(grids.reshape(sets * m, c, *grids.shape[-3:]), local, mode="bilinear",
                              padding_mode="zeros", align_corners=True)  # (S*M, C, 1, 1, n)
        feats = feats.view(sets, m * c, n).transpose(1, 2).reshape(sets * n, m * c)
        return self.decode(feats).view(sets, n)

    def decode(self, feats: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(N,)`` for grid-major features ``(N, M*C)``."""
        if self.config.input_padding:
            feats = torch.cat([feats, feats.new_ones(feats.shape[0], self.config.input_padding)], dim=1)
        return self.decoder(feats)[:, 0]

    # ---- adaptivity ----------------------------------------------------------------------------
    def feature_density(self, points: torch.Tensor) -> torch.Tensor:
        """Flat-top Gaussian feature density ``(N,)``: how many grid features cover each point, per unit volume."""
        local = self.local_coordinates(points)
        inside = _FlatTop.apply(local, self.config.density_exponent)  # (M, N)
        return (self.density_weights()[:, None] * inside).sum(dim=0)

    def parameter_groups(self, lr: float):
        return [
            {"name": "model", "params": [self.feature_grids, *self.decoder.parameters()], "lr": lr},
            {"name": "transforms", "params": [self.transforms], "lr": lr * self.config.transform_lr_scale},
        ]

    def auxiliary_loss(self, points: torch.Tensor, per_point_error: torch.Tensor) -> torch.Tensor:
        """KL divergence from the error-weighted target density to the current feature density (the paper's loss)."""
        return density_kl(self.feature_density(points), per_point_error)

    def density_weights(self) -> torch.Tensor:
        """``(M,)`` each grid's share of :meth:`feature_density` per unit of its flat-top Gaussian: its
        magnification ``det(A)`` over the Gaussian's normalisation ``(2 pi)^1.5``."""
        return torch.linalg.det(self.transforms[:, :3, :3]) / (2 * math.pi) ** 1.5

    # ---- budgets -------------------------------------------------------------------------------
    @classmethod
    def config_for_budget(cls, num_params: int, data_shape_zyx) -> APMGSRNConfig:
        """The paper's family (16 grids, 2-layer decoder) scaled to ``num_params``, grids shaped like the data.

        Below 8,000 parameters (the kilobyte files of 1000x and more) 16 grids and a 32-wide decoder would
        leave the grids a few cells each, so such models get 8 grids and a 16-wide decoder.
        """
        tiny = num_params < 8_000
        n_grids = 8 if tiny else 16
        n_features = 1 if num_params < 300_000 else 2 if num_params < 4_000_000 else 4
        width = 16 if tiny else 32 if num_params < 100_000 else 64
        decoder = MLP.count(n_grids * n_features, 1, width, 2) + n_grids * 16
        voxels = max(8, (num_params - decoder) // (n_grids * n_features))
        shape = fit_grid_shape(voxels, data_shape_zyx)
        return APMGSRNConfig(n_grids=n_grids, n_features=n_features, grid_shape=shape, width=width)

    @classmethod
    def config_for_frames(cls, num_params: int, data_shape_zyx, frames: int) -> APMGSRNConfig:
        """The config whose grids, stored once per key frame (``frames`` copies, :mod:`.time_varying`), fill what
        the shared decoder leaves: the decoder is paid once.

        The decoder and grid count are those of one frame's share of the budget, but never the tiny family's
        (8 grids, 16 wide), since one decoder serves every frame. Sizing them for the whole budget instead (2
        features, 64 wide on a 400k-parameter u-wind series) made each training point 3.6x dearer for the same
        PSNR per step, so equal training time gave 0.4 dB where per-frame sizing gives more."""
        whole = cls.config_for_budget(max(8_000, num_params // max(1, int(frames))), data_shape_zyx)
        per_grid = whole.n_grids * whole.n_features
        decoder = MLP.count(per_grid, 1, whole.width, 2) + whole.n_grids * 16
        voxels = max(8, (num_params - decoder) // (per_grid * max(1, int(frames))))
        return APMGSRNConfig(n_grids=whole.n_grids, n_features=whole.n_features,
                             grid_shape=fit_grid_shape(voxels, data_shape_zyx), width=whole.width)



def density_kl(density: torch.Tensor, per_point_error: torch.Tensor) -> torch.Tensor:
    """The feature-density loss of a batch: KL divergence from the error-weighted target density to the feature
    density ``(N,)`` (both normalised over the batch; the target and the normalisation carry no gradient)."""
    density = density / density.sum().detach()
    err = per_point_error.detach()
    target = torch.exp(torch.log(density.detach() + 1e-16) * (err.mean() / (err + 1e-16)))
    target = target / target.sum()
    return F.kl_div(torch.log(density + 1e-16), torch.log(target + 1e-16), reduction="batchmean", log_target=True)


class _FlatTop(torch.autograd.Function):
    """``exp(-0.5 * sum_d x_d ** n)`` over the last axis, with its gradient written out.

    Autograd through ``x ** n`` by repeated squaring records ~25 elementwise products per call on an
    ``(M, N, 3)`` tensor; the analytic gradient ``-0.5 n x ** (n - 1) * f`` needs four. This was 60 % of an
    APMGSRN training step on CPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int) -> torch.Tensor:
        power_minus_one = _integer_power(x, n - 1)
        value = torch.exp(-0.5 * (power_minus_one * x).sum(dim=-1))
        ctx.save_for_backward(power_minus_one, value)
        ctx.n = n
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        power_minus_one, value = ctx.saved_tensors
        return (grad * value * (-0.5 * ctx.n)).unsqueeze(-1) * power_minus_one, None


def _integer_power(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x ** n`` (n >= 0) by repeated squaring: a few multiplies instead of ``pow``'s exp/log per element."""
    result, base = None, x
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result if result is not None else torch.ones_like(x)
