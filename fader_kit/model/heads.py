"""The FADeR heads: the paper's per-patch MLP and the ViT of Table 3's ablation.

A head maps the tokens its input strategies give (:mod:`fader_kit.model.head_inputs`) to l_hat, one value
per patch.  It knows its token length and whether to standardise the tokens, nothing of where they
come from.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fader_kit.model.config import FaderConfig
from fader_kit.errors import ConfigError


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU()}[name]


class FaderHead(nn.Module):
    """Phi_FADeR: Linear(D, h) -> activation -> Linear(h, 1), applied to each token alone (D = 3 m^2
    for the paper's pixels).

    A head whose input is standardised (every input but raw pixels) first standardises its token with
    the buffers ``input_shift`` / ``input_scale`` (set from the normal training patches by
    :meth:`FaderModel.fit_input_norm`, saved with the model)."""

    def __init__(self, config: FaderConfig, dim: int, standardised: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, config.hidden), _activation(config.activation), nn.Linear(config.hidden, 1))
        if standardised:
            self.register_buffer("input_shift", torch.zeros(dim))
            self.register_buffer("input_scale", torch.ones(dim))
        else:
            self.input_shift = self.input_scale = None

    def forward(self, tokens: Tensor) -> Tensor:
        if self.input_shift is not None:
            tokens = (tokens - self.input_shift) / self.input_scale
        return self.net(tokens).squeeze(-1)


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[grid_h * grid_w, dim]`` (works for any grid)."""
    if dim % 4:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, device=device, dtype=torch.float32),
        torch.arange(grid_w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    out_y = ys.flatten()[:, None] * omega[None]
    out_x = xs.flatten()[:, None] * omega[None]
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)


class ViTHead(nn.Module):
    """Ablation head (Table 3): a small transformer over the patch tokens, so each prediction
    can use the other patches, at the cost of attention's quadratic work."""

    def __init__(self, config: FaderConfig, dim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * config.patch_size ** 2 if dim is None else dim, config.vit_dim)
        layer = nn.TransformerEncoderLayer(
            config.vit_dim, config.vit_heads, dim_feedforward=2 * config.vit_dim, dropout=0.0,
            activation=config.activation, batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.vit_depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(config.vit_dim), nn.Linear(config.vit_dim, 1))

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        gh, gw = grid
        if gh * gw != tokens.shape[1]:
            raise ValueError(f"grid {grid} does not hold {tokens.shape[1]} tokens")
        x = self.embed(tokens) + sincos_position_embedding(gh, gw, self.embed.out_features, tokens.device)
        return self.out(self.blocks(x)).squeeze(-1)


def build_head(config: FaderConfig, dim: int, standardised: bool = False) -> nn.Module:
    """The head ``config.head`` names, for tokens of length ``dim``."""
    if config.head == "vit":
        if standardised:
            raise ConfigError(f"the ViT head reads raw pixels only; head_input {list(config.head_input)} needs "
                              "head='mlp'")
        return ViTHead(config, dim)
    return FaderHead(config, dim, standardised)
