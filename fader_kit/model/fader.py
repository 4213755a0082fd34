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
from torch import Tensor, nn

from fader_kit.model.config import FaderConfig, TrainConfig, UNetConfig, fader_config
from fader_kit.errors import UserError
from fader_kit.model.gates import calibration_from, hard_mask, normalise, soft_mask, theta  # noqa: F401 (public here too)
from fader_kit.model.head_inputs import encoder_level, encoder_tokens, patch_grid, patchify  # noqa: F401 (public here too)
from fader_kit.model.heads import FaderHead, ViTHead, build_head, sincos_position_embedding  # noqa: F401 (public here too)
from fader_kit.maskers.interfaces import Masker, Reconstructor, check_images
from fader_kit.model.obfuscation import obfuscate
from fader_kit.model.ranking import patch_errors, ranking_loss, unmasked_patches  # noqa: F401 (public here too)
from fader_kit.model.scoring import anomaly_map as riad_anomaly_map
from fader_kit.model.scoring import image_score
from fader_kit.util.batching import map_batches
from fader_kit.util.files import torch_save_atomic
from fader_kit.model.variants import head_strategies


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
        *,
        pretrained_backbone: bool = True,
    ) -> None:
        """The head reads and gates through the registered strategies ``config`` names
        (:func:`fader_kit.model.variants.head_strategies`).  ``pretrained_backbone=False``: a frozen network an
        input strategy reads through is built without its pretrained weights (what :meth:`load` does: the
        checkpoint holds them)."""
        super().__init__()
        if not isinstance(reconstructor, Reconstructor):
            raise TypeError(
                f"wrap_with_fader needs a fader_kit Reconstructor (encode/decode), got {type(reconstructor).__name__}"
            )
        self.reconstructor = reconstructor
        self.masker = masker
        self.config = config or FaderConfig()
        self.strategies = head_strategies(self.config)
        inputs = self.strategies.inputs
        for part in inputs.parts:  # frozen networks the inputs read through: built before the head, saved with it
            if part.module_name is not None:
                setattr(self, part.module_name, part.module(pretrained_backbone) if head is not None else None)
        self.head = build_head(self.config, inputs.dim(self), inputs.standardised) if head == "auto" else head
        if self.head is not None and self.config.normaliser == "calibrated":
            # [start, end] of the calibrated normaliser; NaN until calibrate() (saved with the model)
            self.register_buffer("calibration", torch.full((2,), float("nan")))
        else:
            self.register_buffer("calibration", None)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def input_modules(self) -> dict[str, nn.Module]:
        """The frozen networks the head's input strategies read through, by attribute name."""
        names = [p.module_name for p in self.strategies.inputs.parts if p.module_name is not None]
        return {n: m for n in names if (m := getattr(self, n, None)) is not None}

    @property
    def needs_scores(self) -> bool:
        """Whether the head (or its gates) reads the masker's continuous score map."""
        return self.head is not None and self.strategies.reads_scores

    def masker_scores(self, images: Tensor, scores: Tensor | None = None) -> Tensor | None:
        """The masker's score map ``[B, 1, H, W]`` for a head that reads it: ``scores`` as given, else the
        wrapped masker's :meth:`~fader_kit.maskers.interfaces.Masker.score_map`; None for a head that does not."""
        if not self.needs_scores:
            return None
        if scores is None:
            if self.masker is None:
                raise UserError("this FADeR head reads the masker's score map: pass scores= (the masker's "
                                "score_map of the same images) or wrap a masker")
            scores = self.masker.score_map(images)
        if scores.shape[0] != images.shape[0] or scores.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"scores {list(scores.shape)} do not match images {list(images.shape)}")
        return scores.to(images.device).float()

    def without_head(self) -> "FaderModel":
        """Plain EAR sharing this reconstructor and masker (no gates)."""
        return FaderModel(self.reconstructor, self.masker, self.config, head=None)

    def binary_mask(self, images: Tensor) -> Tensor:
        if self.masker is None:
            return torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool, device=images.device)
        return self.masker.mask(images).to(images.device)

    def head_tokens(self, obfuscated: Tensor, feats: list[Tensor] | None = None,
                    scores: Tensor | None = None) -> Tensor:
        """The head's input ``[B, N, D]`` for the patches of the obfuscated image (before the head's own
        standardisation), from its input strategies.  ``feats`` (the encoder's features of ``obfuscated``)
        saves a second encoder pass."""
        return self.strategies.inputs.tokens(self, obfuscated, feats, scores)

    def head_prediction(self, obfuscated: Tensor, feats: list[Tensor] | None = None,
                        scores: Tensor | None = None) -> Tensor:
        """The learned head's l_hat ``[B, N]`` for the patches of the obfuscated image."""
        if self.head is None:
            raise RuntimeError("this FaderModel has no head (plain EAR)")
        tokens = self.head_tokens(obfuscated, feats, scores)
        if isinstance(self.head, ViTHead):
            return self.head(tokens, patch_grid(obfuscated, self.patch_size))
        return self.head(tokens)

    def predict_errors(self, obfuscated: Tensor, feats: list[Tensor] | None = None,
                       scores: Tensor | None = None) -> Tensor:
        """l_hat ``[B, N]`` for the patches of the obfuscated image, as the gate strategy takes it (the
        learned head's prediction unless the strategy reads it elsewhere)."""
        if self.head is None:
            raise RuntimeError("this FaderModel has no head (plain EAR)")
        return self.strategies.gates.predict(self, obfuscated, feats, scores)

    @torch.no_grad()
    def fit_input_norm(self, images: Tensor, binary_masks: Tensor | None = None, scores: Tensor | None = None,
                       batch_size: int = 16) -> None:
        """Set the head's input standardisation (mean and std of each input over the patches of the
        normal ``images``, obfuscated with their M_B); a no-op for the paper's pixel head."""
        shift = getattr(self.head, "input_shift", None)
        if shift is None:
            return
        device = shift.device
        total = total_sq = None
        count = 0
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(device)
            mb = (torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=device)
                  if binary_masks is None else binary_masks[i : i + batch_size].to(device).bool())
            s = self.masker_scores(x, None if scores is None else scores[i : i + batch_size])
            was = self.reconstructor.training
            self.reconstructor.eval()
            try:
                t = self.head_tokens(obfuscate(x, mb, self.patch_size), scores=s).flatten(0, 1).double()
            finally:
                self.reconstructor.train(was)
            total = t.sum(0) if total is None else total + t.sum(0)
            total_sq = (t * t).sum(0) if total_sq is None else total_sq + (t * t).sum(0)
            count += t.shape[0]
        mean = total / count
        std = (total_sq / count - mean * mean).clamp(min=0).sqrt()
        self.head.input_shift.copy_(mean.float())
        self.head.input_scale.copy_(torch.clamp(std, min=1e-6).float())

    def gate_grid(self, pred: Tensor, grid: tuple[int, int], binary_mask: Tensor | None = None) -> Tensor:
        """The gates on the patch grid, ``[B, 1, gh, gw]``, as the gate strategy makes them from l_hat
        (M_S or the hard ablation gate for the paper's; ``binary_mask`` ``[B, 1, H, W]`` for a strategy
        that reads M_B)."""
        return self.strategies.gates.grid(self, pred, grid, binary_mask, self.calibration)

    @torch.no_grad()
    def head_outputs(self, images: Tensor, binary_mask: Tensor, scores: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """l_hat ``[B, N]`` and the gate grid ``[B, 1, H/m, W/m]`` for images and their M_B, without
        running the decoder (the head sees only the obfuscated image, its encoder features and the
        masker's score): what the diagnostics inspect."""
        mask = binary_mask.to(images.device).bool()
        obf = obfuscate(images, mask, self.patch_size)
        pred = self.predict_errors(obf, scores=self.masker_scores(images, scores))
        return pred, self.gate_grid(pred, patch_grid(images, self.patch_size), mask)

    @torch.no_grad()
    def calibrate(self, images: Tensor, binary_masks: Tensor | None = None, batch_size: int = 16,
                  scores: Tensor | None = None, threshold: float | None = None) -> Tensor:
        """Set the calibrated normaliser from l_hat on normal ``images`` (obfuscated with their M_B);
        returns [start, end].  Only for ``normaliser="calibrated"``.  With ``focus="unmasked"`` only the
        patches without an M_B pixel count (masked patches are flat mosaic cells whose high l_hat says
        nothing about the patches the gates must judge).  ``threshold`` (the fitted masker's) is passed to
        the gate strategy, which may end the gates there (:meth:`calibration_end`)."""
        if self.calibration is None:
            raise ValueError("calibrate() needs a FaderModel with a head and normaliser='calibrated'")
        was_training = self.training
        self.eval()
        preds = []
        try:
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].to(self.calibration.device)
                mb = (torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=x.device)
                      if binary_masks is None else binary_masks[i : i + batch_size].to(x.device).bool())
                s = self.masker_scores(x, None if scores is None else scores[i : i + batch_size])
                obf = obfuscate(x, mb, self.patch_size)
                pred = self.predict_errors(obf) if s is None else self.predict_errors(obf, scores=s)
                preds.append(pred[unmasked_patches(mb, self.patch_size)] if self.config.focus == "unmasked"
                             else pred.flatten())
        finally:
            self.train(was_training)
        self.calibration.copy_(calibration_from(torch.cat(preds), self.config.calibration_quantile,
                                                self.config.calibration_width, self.calibration_end(threshold)))
        return self.calibration.clone()

    def calibration_end(self, threshold: float | None = None) -> float | None:
        """Where the calibrated gates reach 0, as the gate strategy sets it; None for the default end
        (the spread of the normal predictions)."""
        return self.strategies.gates.calibration_end(self, threshold)

    def skip_gates(self, gate_grid: Tensor, feats: list[Tensor]) -> list[Tensor]:
        """Theta(M_S) at the resolution of each skip feature of depth 1..D-1 (Eq. 4)."""
        return [theta(gate_grid, tuple(f.shape[-2:]), self.config.theta) for f in feats[:-1]]

    def forward(self, images: Tensor, binary_mask: Tensor | None = None, detach_gates: bool = False,
                scores: Tensor | None = None) -> FaderOutput:
        """``scores``: the masker's score map of ``images`` ``[B, 1, H, W]``, read only by a head whose
        strategies read it (:attr:`needs_scores`; else the wrapped masker computes it)."""
        check_images(images)
        m = self.patch_size
        mask = self.binary_mask(images) if binary_mask is None else binary_mask.to(images.device).bool()
        obf = obfuscate(images, mask, m)
        feats = self.reconstructor.encode(obf)
        if self.head is None:
            return FaderOutput(self.reconstructor.decode(feats), None, mask, obf, None)
        pred = self.predict_errors(obf, feats, self.masker_scores(images, scores))
        gates_grid = self.gate_grid(pred, patch_grid(images, m), mask)
        gates = self.skip_gates(gates_grid.detach() if detach_gates else gates_grid, feats)
        return FaderOutput(self.reconstructor.decode(feats, gates), gates_grid, mask, obf, pred)

    @torch.no_grad()
    def anomaly_map(self, images: Tensor, binary_mask: Tensor | None = None, kernel_size: int = 21,
                    scores: Tensor | None = None) -> Tensor:
        """Smoothed MSGMS map between the input and its reconstruction, ``[B, 1, H, W]``.

        Always computed in eval mode (running BatchNorm statistics): in train mode the batch
        statistics would make one image's score depend on its batch and overwrite the running
        statistics.  The module's previous mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            out = self.forward(images, binary_mask, scores=scores)
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
        from fader_kit.model.training import train_fader

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
        from fader_kit.util.safe_load import torch_load_safe

        ckpt = torch_load_safe(path, "FADeR checkpoint")
        if not isinstance(ckpt, dict) or ckpt.get("format") != "fader-kit/fader-model/1":
            raise ValueError(f"{path} is not a fader-kit FaderModel checkpoint")
        if reconstructor is None:
            if ckpt["unet_config"] is None:
                raise ValueError(f"{path} holds a custom reconstructor: pass reconstructor= to load it")
            from fader_kit.model.unet import EARUNet

            reconstructor = EARUNet(UNetConfig(**ckpt["unet_config"]))
        model = cls(reconstructor, masker, fader_config(ckpt["fader_config"]), head="auto" if ckpt["has_head"] else None,
                    pretrained_backbone=False)  # the checkpoint's state holds every weight
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()  # ready to score: running statistics, never batch statistics


def wrap_with_fader(model: Reconstructor, masker: Masker | None, config: FaderConfig | None = None) -> FaderModel:
    """Attach a fresh FADeR head to ``model``'s skip connections, fed by ``masker``'s masks."""
    return FaderModel(model, masker, config)
