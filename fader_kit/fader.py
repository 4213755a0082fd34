"""FADeR: predict patch-wise reconstruction error and attenuate skip connections (paper Sec. 3).

The head sees the obfuscated image I' cut into m x m patches (m = the mosaic scale, Sec. 3.2),
predicts each patch's error l_hat (Eq. 2), and the soft mask M_S = 1 - normalise(l_hat)
(Sec. 3.3) multiplies every skip connection of depth 1..D-1 after the resize Theta (Eq. 4).
Patches the head expects to reconstruct badly -- likely defects the binary mask missed --
reach the decoder attenuated, so the decoder paints normal patterns there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FaderConfig, TrainConfig, UNetConfig, fader_config
from .interfaces import Masker, Reconstructor, check_images
from .obfuscation import obfuscate
from .ranking import patch_errors, ranking_loss, unmasked_patches  # noqa: F401 (public here too)
from .scoring import anomaly_map as riad_anomaly_map
from .scoring import image_score
from .util.batching import device_batches, map_batches
from .util.files import torch_save_atomic
from .util.quantiles import quantiles


# -- tokens and targets ---------------------------------------------------------------------------
def patchify(images: Tensor, m: int) -> Tensor:
    """Non-overlapping m x m patches as tokens ``[B, N, 3*m*m]``, row-major over the patch grid."""
    h, w = images.shape[-2:]
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size m={m}")
    return F.unfold(images, kernel_size=m, stride=m).transpose(1, 2)


def context_tokens(images: Tensor, m: int, context: str = "token") -> Tensor:
    """The head's input per patch, ``[B, N, D]``: the m x m patch alone (``token``, the paper) or
    the 3m x 3m window centred on it (``neighbours``; the image is reflect-padded by m), so the head
    can compare a patch with its surroundings instead of judging its texture alone."""
    if context == "token":
        return patchify(images, m)
    if context == "neighbours":
        h, w = images.shape[-2:]
        if h % m or w % m:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size m={m}")
        padded = F.pad(images, (m, m, m, m), mode="reflect")
        return F.unfold(padded, kernel_size=3 * m, stride=m).transpose(1, 2)
    raise ValueError(f"unknown head context {context!r}; use 'token' or 'neighbours'")


def token_dim(config: FaderConfig) -> int:
    """Length of one head input token for ``config`` (3 m^2, or 27 m^2 with neighbours)."""
    side = config.patch_size * (3 if config.experiment.context == "neighbours" else 1)
    return 3 * side * side


# -- heads ----------------------------------------------------------------------------------------
def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU()}[name]


class FaderHead(nn.Module):
    """Phi_FADeR: Linear(3 m^2, h) -> activation -> Linear(h, 1), applied to each token alone."""

    def __init__(self, config: FaderConfig) -> None:
        super().__init__()
        dim = token_dim(config)
        self.net = nn.Sequential(nn.Linear(dim, config.hidden), _activation(config.activation), nn.Linear(config.hidden, 1))

    def forward(self, tokens: Tensor) -> Tensor:
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

    def __init__(self, config: FaderConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim(config), config.vit_dim)
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


def build_head(config: FaderConfig) -> nn.Module:
    return ViTHead(config) if config.head == "vit" else FaderHead(config)


# -- loss and masks -------------------------------------------------------------------------------

def calibration_from(pred: Tensor, quantile: float = 0.995, width: float = 2.0) -> Tensor:
    """The calibrated normaliser's two levels ``[start, end]`` from l_hat of normal patches (any shape):
    ``start`` = the ``quantile`` of the predictions, ``end`` = median + width * (start - median).
    Gates stay 1 up to ``start`` and reach 0 at ``end``; ``end > start`` always holds."""
    flat = pred.detach().flatten().float()
    start = torch.tensor(quantiles(flat, [quantile], what="calibration of the head's predictions")[0])
    median = flat.median()  # the lower middle value, as torch defines it
    spread = torch.clamp(start - median, min=1e-6 * (flat.abs().max() + 1e-12))
    return torch.stack([start, median + width * spread]).to(pred.dtype)


def normalise(pred: Tensor, how: str = "minmax", eps: float = 1e-8, calibration: Tensor | None = None) -> Tensor:
    """Normalisation of l_hat ``[B, N]`` to [0, 1]: per image min-max (paper) or sigmoid of the
    z-score; or ``calibrated``: one fixed scale for every image (``calibration`` = [start, end] from
    :func:`calibration_from`), 0 up to ``start`` and 1 from ``end`` on, so an image whose patches all
    look normal keeps every gate at 1 (Sec. 3.3's intent) instead of closing its worst patch."""
    if how == "calibrated":
        if calibration is None or not torch.isfinite(calibration).all():
            raise ValueError("the calibrated normaliser needs a calibration: train the head (train_fader) or call "
                             "FaderModel.calibrate(normal_images) first")
        start, end = calibration[0], calibration[1]
        return ((pred - start) / (end - start)).clamp(0.0, 1.0)
    if how == "minmax":
        lo = pred.amin(dim=1, keepdim=True)
        hi = pred.amax(dim=1, keepdim=True)
        return (pred - lo) / (hi - lo + eps)
    if how == "sigmoid":
        mu = pred.mean(dim=1, keepdim=True)
        sd = pred.std(dim=1, keepdim=True)
        return torch.sigmoid((pred - mu) / (sd + eps))
    raise ValueError(f"unknown normaliser {how!r}; use 'minmax', 'sigmoid' or 'calibrated'")


def soft_mask(pred: Tensor, how: str = "minmax", calibration: Tensor | None = None) -> Tensor:
    """M_S = 1 - normalise(l_hat): 0 at the patch most expected to be defective, 1 at the least."""
    return 1.0 - normalise(pred, how, calibration=calibration)


def hard_mask(pred: Tensor, threshold: float = 0.5, how: str = "minmax", calibration: Tensor | None = None) -> Tensor:
    """Ablation: binary gate, 0 where normalise(l_hat) > threshold, else 1."""
    return (normalise(pred, how, calibration=calibration) <= threshold).to(pred.dtype)


def theta(gate_grid: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Resize the patch-grid gate ``[B, 1, gh, gw]`` to a skip feature's ``size``.

    ``nearest``: upsampling repeats each patch's gate over the feature cells it covers.  Where
    a skip map is coarser than the patch grid, plain nearest sampling would drop patches
    (and with them a suspected defect), so each feature cell takes the smallest gate -- the
    strongest attenuation -- of the patches it covers.  ``bilinear`` (the ablation) smooths.
    """
    gh, gw = gate_grid.shape[-2:]
    h, w = size
    if mode == "nearest":
        if h < gh or w < gw:
            return -F.adaptive_max_pool2d(-gate_grid, (h, w))
        return F.interpolate(gate_grid, size=(h, w), mode="nearest")
    if mode == "bilinear":
        return F.interpolate(gate_grid, size=(h, w), mode="bilinear", align_corners=False, antialias=h < gh)
    raise ValueError(f"unknown theta mode {mode!r}; use 'nearest' or 'bilinear'")


# -- the wrapped model ----------------------------------------------------------------------------
class FaderOutput(NamedTuple):
    reconstruction: Tensor          # I_hat [B, 3, H, W]
    soft_mask: Tensor | None        # gate on the patch grid [B, 1, H/m, W/m] (None for plain EAR)
    binary_mask: Tensor             # M_B [B, 1, H, W] bool
    obfuscated: Tensor              # I'  [B, 3, H, W]
    predicted_error: Tensor | None  # l_hat [B, N]


class FaderModel(nn.Module):
    """A reconstructor with the FADeR head on its skip connections.

    ``head=None`` gives plain EAR on the same reconstructor and masks, which is how every
    benchmark row compares the two.  Masks come from ``masker`` unless passed to ``forward``
    (benchmarks compute them once and reuse them).
    """

    def __init__(
        self,
        reconstructor: Reconstructor,
        masker: Masker | None = None,
        config: FaderConfig | None = None,
        head: nn.Module | None | str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(reconstructor, Reconstructor):
            raise TypeError(
                f"wrap_with_fader needs a fader_kit Reconstructor (encode/decode), got {type(reconstructor).__name__}"
            )
        self.reconstructor = reconstructor
        self.masker = masker
        self.config = config or FaderConfig()
        self.head = build_head(self.config) if head == "auto" else head
        if self.head is not None and self.config.normaliser == "calibrated":
            # [start, end] of the calibrated normaliser; NaN until calibrate() (saved with the model)
            self.register_buffer("calibration", torch.full((2,), float("nan")))
        else:
            self.register_buffer("calibration", None)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def without_head(self) -> "FaderModel":
        """Plain EAR sharing this reconstructor and masker (no gates)."""
        return FaderModel(self.reconstructor, self.masker, self.config, head=None)

    def binary_mask(self, images: Tensor) -> Tensor:
        if self.masker is None:
            return torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool, device=images.device)
        return self.masker.mask(images).to(images.device)

    def predict_errors(self, obfuscated: Tensor) -> Tensor:
        """l_hat ``[B, N]`` for the patches of the obfuscated image."""
        if self.head is None:
            raise RuntimeError("this FaderModel has no head (plain EAR)")
        tokens = context_tokens(obfuscated, self.patch_size, self.config.experiment.context)
        grid = (obfuscated.shape[-2] // self.patch_size, obfuscated.shape[-1] // self.patch_size)
        if isinstance(self.head, ViTHead):
            return self.head(tokens, grid)
        return self.head(tokens)

    def gate_grid(self, pred: Tensor, grid: tuple[int, int]) -> Tensor:
        """M_S (or the hard ablation gate) on the patch grid, ``[B, 1, gh, gw]``; all ones for the
        ``gates="open"`` control."""
        if self.config.experiment.gates == "open":
            return torch.ones(pred.shape[0], 1, *grid, dtype=pred.dtype, device=pred.device)
        if self.config.masking == "hard":
            g = hard_mask(pred, self.config.hard_threshold, self.config.normaliser, self.calibration)
        else:
            g = soft_mask(pred, self.config.normaliser, self.calibration)
        return g.reshape(pred.shape[0], 1, *grid)

    @torch.no_grad()
    def head_outputs(self, images: Tensor, binary_mask: Tensor) -> tuple[Tensor, Tensor]:
        """l_hat ``[B, N]`` and the gate grid ``[B, 1, H/m, W/m]`` for images and their M_B, without
        running the U-Net (the head sees only the obfuscated image): what the diagnostics inspect."""
        obf = obfuscate(images, binary_mask.to(images.device).bool(), self.patch_size)
        pred = self.predict_errors(obf)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return pred, self.gate_grid(pred, grid)

    @torch.no_grad()
    def calibrate(self, images: Tensor, binary_masks: Tensor | None = None, batch_size: int = 16) -> Tensor:
        """Set the calibrated normaliser from l_hat on normal ``images`` (obfuscated with their M_B);
        returns [start, end].  Only for ``normaliser="calibrated"``.  With ``focus="unmasked"`` only the
        patches without an M_B pixel count (masked patches are flat mosaic cells whose high l_hat says
        nothing about the patches the gates must judge)."""
        if self.calibration is None:
            raise ValueError("calibrate() needs a FaderModel with a head and normaliser='calibrated'")
        was_training = self.training
        self.eval()
        preds = []
        if binary_masks is None:
            binary_masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
        try:
            for x, mb in device_batches(images, binary_masks, batch_size=batch_size, device=self.calibration.device):
                mb = mb.bool()
                pred = self.predict_errors(obfuscate(x, mb, self.patch_size))
                preds.append(pred[unmasked_patches(mb, self.patch_size)] if self.config.focus == "unmasked"
                             else pred.flatten())
        finally:
            self.train(was_training)
        self.calibration.copy_(calibration_from(torch.cat(preds), self.config.calibration_quantile,
                                                self.config.calibration_width))
        return self.calibration.clone()

    def skip_gates(self, gate_grid: Tensor, feats: list[Tensor]) -> list[Tensor]:
        """Theta(M_S) at the resolution of each skip feature of depth 1..D-1 (Eq. 4)."""
        return [theta(gate_grid, tuple(f.shape[-2:]), self.config.theta) for f in feats[:-1]]

    def forward(self, images: Tensor, binary_mask: Tensor | None = None, detach_gates: bool = False) -> FaderOutput:
        check_images(images)
        m = self.patch_size
        mask = self.binary_mask(images) if binary_mask is None else binary_mask.to(images.device).bool()
        obf = obfuscate(images, mask, m)
        feats = self.reconstructor.encode(obf)
        if self.head is None:
            return FaderOutput(self.reconstructor.decode(feats), None, mask, obf, None)
        pred = self.predict_errors(obf)
        grid = (images.shape[-2] // m, images.shape[-1] // m)
        gates_grid = self.gate_grid(pred, grid)
        gates = self.skip_gates(gates_grid.detach() if detach_gates else gates_grid, feats)
        return FaderOutput(self.reconstructor.decode(feats, gates), gates_grid, mask, obf, pred)

    @torch.no_grad()
    def anomaly_map(self, images: Tensor, binary_mask: Tensor | None = None, kernel_size: int = 21) -> Tensor:
        """Smoothed MSGMS map between the input and its reconstruction, ``[B, 1, H, W]``.

        Always computed in eval mode (running BatchNorm statistics): in train mode the batch
        statistics would make one image's score depend on its batch and overwrite the running
        statistics.  The module's previous mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.forward(images, binary_mask)
        finally:
            self.train(was_training)
        return riad_anomaly_map(images, out.reconstruction, kernel_size)

    @torch.no_grad()
    def score(self, images: Tensor, binary_mask: Tensor | None = None) -> Tensor:
        """Image-level anomaly score ``[B]`` (max of the anomaly map)."""
        return image_score(self.anomaly_map(images, binary_mask))

    def fit(
        self,
        images: Tensor,
        masks: Tensor | None = None,
        train_config: TrainConfig | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> list[dict[str, float]]:
        """Train the head (and fine-tune the decoder) on normal images; see training.train_fader.
        Without ``masks`` the wrapped masker's M_B of ``images`` is used (none: random blobs only)."""
        from .training import train_fader

        if masks is None and self.masker is not None and isinstance(images, Tensor):
            with torch.no_grad():
                masks = map_batches(self.binary_mask, images, batch_size=16, device=device)
        return train_fader(self, images, masks, train_config or TrainConfig(), seed=seed, device=device, progress=progress)

    # -- persistence ----------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        unet_cfg = getattr(self.reconstructor, "config", None)
        return {
            "format": "fader-kit/fader-model/1",
            "fader_config": self.config.model_dump(mode="json"),
            "unet_config": unet_cfg.model_dump(mode="json") if isinstance(unet_cfg, UNetConfig) else None,
            "has_head": self.head is not None,
            "state_dict": self.state_dict(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the reconstructor, head and configs atomically (a crash never leaves half a file)."""
        return torch_save_atomic(self.checkpoint(), path)

    @classmethod
    def load(cls, path: str | Path, masker: Masker | None = None, reconstructor: Reconstructor | None = None) -> "FaderModel":
        """Rebuild a saved model; an EARUNet is recreated from its config, other reconstructors
        must be passed in (same architecture)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FADeR checkpoint not found: {path}")
        from .util.safe_load import torch_load_safe

        ckpt = torch_load_safe(path, "FADeR checkpoint")
        if not isinstance(ckpt, dict) or ckpt.get("format") != "fader-kit/fader-model/1":
            raise ValueError(f"{path} is not a fader-kit FaderModel checkpoint")
        if reconstructor is None:
            if ckpt["unet_config"] is None:
                raise ValueError(f"{path} holds a custom reconstructor: pass reconstructor= to load it")
            from .unet import EARUNet

            reconstructor = EARUNet(UNetConfig(**ckpt["unet_config"]))
        model = cls(reconstructor, masker, fader_config(ckpt["fader_config"]), head="auto" if ckpt["has_head"] else None)
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()  # ready to score: running statistics, never batch statistics


def wrap_with_fader(model: Reconstructor, masker: Masker | None, config: FaderConfig | None = None) -> FaderModel:
    """Attach a fresh FADeR head to ``model``'s skip connections, fed by ``masker``'s masks."""
    return FaderModel(model, masker, config)
