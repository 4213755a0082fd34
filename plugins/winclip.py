"""``winclip``: zero-shot WinCLIP (Jeong et al., CVPR 2023) on open_clip ``ViT-B-16-plus-240``.

How a score map is made (zero-shot branch of the paper, Sec. 3-4):

* **Compositional prompt ensemble.**  State words for the normal and the anomalous state of an
  object ("flawless {}", "{} with defect", ...) are put into every template ("a close-up photo
  of the {}.", ...).  Each prompt is embedded by the CLIP text tower and L2-normalised; the mean
  per state, normalised again, gives two class vectors ``t_normal`` and ``t_anomalous``.
* **Score of an embedding** ``f``: the anomalous probability of a two-way softmax over the
  cosine similarities, ``softmax([cos(f, t_n), cos(f, t_a)] / temperature)[1]`` (temperature
  0.07, CLIP's).
* **Window embeddings.**  The 240x240 image gives a 15x15 patch grid.  For a window scale ``k``
  (2 and 3), every ``k x k`` window of patches (stride 1) is embedded by running the transformer
  on the class token plus only that window's tokens (with their positional embeddings), so the
  class token summarises the window alone.  The whole image is embedded the ordinary way.
* **Aggregation.**  Each patch gets, per scale, the harmonic mean of the scores of all windows
  covering it; the per-scale maps and the whole-image score (as a constant map) are combined by
  another harmonic mean.  The harmonic mean lets one confident-normal window pull a patch down,
  which keeps the map sharp around small defects.  The patch map is upsampled *bilinearly*.
* **Mask**: ``score_map > threshold``; the threshold is configuration (default 0.5, i.e. "more
  anomalous than normal"), or calibrated in :meth:`WinClipMasker.fit` as a quantile of the
  scores of normal images when ``threshold_quantile`` is set.

The embedding step sits behind :class:`WindowEncoder` so that tests can use a stand-in with
known embeddings; :class:`OpenClipWindowEncoder` is the real one.  The text tower is used once,
at construction, and then dropped: only the two class vectors are kept.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from fader_kit.maskers.hookspecs import hookimpl
from fader_kit.util.quantiles import quantiles
from fader_kit.maskers.interfaces import Masker, MaskerInfo, check_images
from fader_kit.maskers.registry import masker_config
from fader_kit.maskers.weights import load_open_clip_model

ARCHITECTURE = "ViT-B-16-plus-240"
PRETRAINED = "laion400m_e31"

# State words (paper, Fig. 3 / appendix): "{}" is the object name.
NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)

# Category folder names of MVTec AD, VisA and MPDD that are not already plain words.  Anything
# else becomes words by dropping a trailing number and splitting on underscores.
CATEGORY_WORDS = {
    "metal_nut": "metal nut",
    "chewinggum": "chewing gum",
    "pipe_fryum": "pipe fryum",
    "pcb": "printed circuit board",
    "macaroni": "macaroni",
    "bracket_black": "black bracket",
    "bracket_brown": "brown bracket",
    "bracket_white": "white bracket",
}


def category_object_name(category: str) -> str:
    """The noun WinCLIP puts into its prompts for a dataset category folder.

    ``metal_nut`` -> ``metal nut``, ``pcb1`` .. ``pcb4`` -> ``printed circuit board``,
    ``macaroni2`` -> ``macaroni``, ``chewinggum`` -> ``chewing gum``, ``bottle`` -> ``bottle``.
    """
    key = category.strip().lower()
    if key in CATEGORY_WORDS:
        return CATEGORY_WORDS[key]
    stem = key.rstrip("0123456789").rstrip("_") or key
    return CATEGORY_WORDS.get(stem, stem.replace("_", " ").replace("-", " ").strip() or "object")


def prompt_ensemble(object_name: str = "object") -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts): every state word in every template."""
    def expand(states: Sequence[str]) -> list[str]:
        return [template.format(state.format(object_name)) for state in states for template in TEMPLATES]

    return expand(NORMAL_STATES), expand(ANOMALOUS_STATES)


def class_text_embeddings(encode_text: Callable[[list[str]], Tensor], object_name: str = "object") -> Tensor:
    """``[2, D]``: the normalised mean of the normalised prompt embeddings, normal then anomalous."""
    rows = []
    for prompts in prompt_ensemble(object_name):
        emb = F.normalize(encode_text(prompts).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


def anomaly_probability(embeddings: Tensor, text: Tensor, temperature: float = 0.07) -> Tensor:
    """``P(anomalous)`` per embedding ``[..., D] -> [...]`` from a softmax over the two cosines."""
    cos = F.normalize(embeddings.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T  # [..., 2]
    return (cos / temperature).softmax(dim=-1)[..., 1]


def sliding_windows(grid: tuple[int, int], scale: int, stride: int = 1) -> Tensor:
    """``[W, scale*scale]`` row-major patch indices of the ``scale x scale`` windows.

    Windows start every ``stride`` patches (the paper: 1); with a larger stride the last row and
    column of windows are added so that every patch stays covered.
    """
    h, w = grid
    if not 1 <= scale <= min(h, w):
        raise ValueError(f"window scale {scale} does not fit the {h}x{w} patch grid")
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")

    def starts(size: int) -> list[int]:
        out = list(range(0, size - scale + 1, stride))
        return out if out[-1] == size - scale else out + [size - scale]

    offsets = torch.arange(scale)
    rows = []
    for r in starts(h):
        for c in starts(w):
            rows.append(((r + offsets)[:, None] * w + (c + offsets)[None, :]).flatten())
    return torch.stack(rows)


def harmonic_aggregation(window_scores: Tensor, windows: Tensor, grid: tuple[int, int], eps: float = 1e-6) -> Tensor:
    """``[B, h, w]``: per patch, the harmonic mean of the scores of the windows covering it.

    ``window_scores`` is ``[B, W]``, ``windows`` ``[W, k*k]`` patch indices.  A patch covered by
    windows with scores ``s_1..s_n`` gets ``n / sum(1 / s_i)``.
    """
    h, w = grid
    cover = torch.zeros(windows.shape[0], h * w, device=window_scores.device)
    cover.scatter_(1, windows.to(window_scores.device), 1.0)  # [W, P]
    count = cover.sum(dim=0)
    if bool((count == 0).any()):
        raise ValueError("some patches are covered by no window")
    inverse = (1.0 / window_scores.clamp_min(eps)) @ cover  # [B, P]
    return (count / inverse).reshape(-1, h, w)


def harmonic_mean(maps: Sequence[Tensor], eps: float = 1e-6) -> Tensor:
    """Elementwise harmonic mean of equally shaped tensors."""
    return len(maps) / torch.stack([1.0 / m.clamp_min(eps) for m in maps]).sum(dim=0)


# -- the embedding step ---------------------------------------------------------------------------
class WindowEncoder(Protocol):
    """What WinCLIP needs from an image model.

    ``encode(pixels, windows)`` gets images already resized to ``input_size`` and normalised
    with ``mean``/``std``, and ``windows`` (one ``[W_s, k_s*k_s]`` index tensor per scale, patch
    indices row-major on ``grid_size``); it returns the whole-image embeddings ``[B, D]`` and one
    ``[B, W_s, D]`` tensor of window embeddings per scale.
    """

    input_size: int
    grid_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def encode(self, pixels: Tensor, windows: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]: ...


class OpenClipWindowEncoder(nn.Module):
    """WindowEncoder over an open_clip ``VisionTransformer`` (class-token pooling)."""

    def __init__(self, visual: nn.Module, *, window_batch: int = 1024) -> None:
        super().__init__()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise TypeError("WinCLIP needs an open_clip ViT pooled by its class token (no attentional pooling)")
        if getattr(visual, "final_ln_after_pool", False):
            raise TypeError("WinCLIP expects ln_post before pooling (final_ln_after_pool=False)")
        self.visual = visual
        self.window_batch = window_batch
        self.grid_size = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        self.mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))

    def tokens(self, pixels: Tensor) -> Tensor:
        """``[B, 1+P, width]``: class + patch tokens with positional embeddings, after ln_pre.

        ln_pre acts on each token alone, so selecting tokens after it equals selecting before.
        """
        v = self.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)  # [B, P, width]
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def pooled(self, tokens: Tensor) -> Tensor:
        """Run the transformer on token sequences ``[N, L, width]``; ``[N, D]`` projected class tokens."""
        v = self.visual
        x = v.ln_post(v.transformer(tokens))[:, 0]
        return x @ v.proj if v.proj is not None else x

    def encode(self, pixels: Tensor, windows: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        tokens = self.tokens(pixels)
        b, _, width = tokens.shape
        image = self.pooled(tokens)
        per_scale = []
        for win in windows:
            cls = torch.zeros(win.shape[0], 1, dtype=torch.long, device=win.device)
            index = torch.cat([cls, win + 1], dim=1).to(tokens.device)  # [W, 1+k*k]
            seqs = tokens[:, index].reshape(b * index.shape[0], index.shape[1], width)
            emb = torch.cat([self.pooled(chunk) for chunk in seqs.split(self.window_batch)])
            per_scale.append(emb.reshape(b, index.shape[0], -1))
        return image, per_scale


# -- configuration and masker ---------------------------------------------------------------------
class WinClipConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = ARCHITECTURE
    pretrained: str = PRETRAINED
    weights: str | None = Field(None, description="open_clip checkpoint file or folder")
    allow_random_weights: bool = False
    offline: bool | None = Field(None, description="None: HF_HUB_OFFLINE, or offline when the hub does not answer")
    device: str | None = None
    object_name: str = Field("object", min_length=1, description="the noun put into the prompts")
    scales: tuple[int, ...] = Field((2, 3), description="window sides in patches")
    window_stride: int = Field(1, ge=1, description="windows start every this many patches (paper: 1)")
    include_image_score: bool = Field(True, description="combine the whole-image score as one more scale")
    temperature: float = Field(0.07, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1, description="mask = score_map > threshold")
    threshold_quantile: float | None = Field(
        None, gt=0, lt=1, description="if set, fit() sets threshold to this quantile of normal scores"
    )
    batch_size: int = Field(8, ge=1, description="images per forward pass")
    window_batch: int = Field(1024, ge=1, description="window sequences per transformer call")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in v):
            raise ValueError(f"scales must be positive window sides, got {v}")
        return v


class WinClipMasker(Masker):
    """Zero-shot WinCLIP masker; ``encoder`` is any :class:`WindowEncoder`."""

    def __init__(
        self,
        config: WinClipConfig,
        *,
        encoder: WindowEncoder,
        text_embeddings: Tensor,
        weights_source: str = "given",
    ) -> None:
        if text_embeddings.ndim != 2 or text_embeddings.shape[0] != 2:
            raise ValueError(f"text_embeddings must be [2, D] (normal, anomalous), got {list(text_embeddings.shape)}")
        if not config.scales and not config.include_image_score:
            raise ValueError("winclip needs at least one window scale or the whole-image score")
        self.config = config
        self.encoder = encoder
        self.text_embeddings = text_embeddings.detach().float()
        self.weights_source = weights_source
        self.windows = [sliding_windows(encoder.grid_size, s, config.window_stride) for s in config.scales]
        self.threshold = config.threshold
        if isinstance(encoder, nn.Module):
            encoder.eval().requires_grad_(False)
        if config.device is not None:
            self.to(config.device)

    @property
    def info(self) -> MaskerInfo:
        return MaskerInfo(
            name="winclip",
            weights=self.weights_source,
            input_size=self.encoder.input_size,
            details={
                "model": f"{self.config.architecture}/{self.config.pretrained}",
                "scales": list(self.config.scales),
                "window_stride": self.config.window_stride,
                "object_name": self.config.object_name,
                "threshold": self.threshold,
            },
        )

    @property
    def device(self) -> torch.device:
        return self.text_embeddings.device

    def to(self, device: str | torch.device) -> "WinClipMasker":
        if isinstance(self.encoder, nn.Module):
            self.encoder.to(device)
        self.text_embeddings = self.text_embeddings.to(device)
        self.windows = [w.to(device) for w in self.windows]
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        x = check_images(images).to(self.device, torch.float32)
        s = self.encoder.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.encoder.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.encoder.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def patch_scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(image scores ``[B]``, patch-grid map ``[B, h, w]``), both anomalous probabilities."""
        image_parts, map_parts = [], []
        h, w = self.encoder.grid_size
        for i in range(0, images.shape[0], self.config.batch_size):
            image_emb, window_embs = self.encoder.encode(self.preprocess(images[i : i + self.config.batch_size]), self.windows)
            image_score = anomaly_probability(image_emb, self.text_embeddings, self.config.temperature)
            maps = []
            if self.config.include_image_score:
                maps.append(image_score.view(-1, 1, 1).expand(-1, h, w))
            for win, emb in zip(self.windows, window_embs):
                scores = anomaly_probability(emb, self.text_embeddings, self.config.temperature)
                maps.append(harmonic_aggregation(scores, win, (h, w)))
            image_parts.append(image_score)
            map_parts.append(harmonic_mean(maps))
        return torch.cat(image_parts), torch.cat(map_parts)

    def score_map(self, images: Tensor) -> Tensor:
        _, grid = self.patch_scores(images)
        up = F.interpolate(grid.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return up.to(images.device)

    def image_scores(self, images: Tensor) -> Tensor:
        """WinCLIP's zero-shot classification score (whole-image embedding), ``[B]``."""
        return self.patch_scores(images)[0].to(images.device)

    def fit(self, images: Tensor, *, seed: int = 0, progress: bool = False) -> "WinClipMasker":
        """Zero-shot: nothing to learn.  With ``threshold_quantile`` set, calibrate the threshold
        as that quantile of the patch scores of these normal images."""
        if self.config.threshold_quantile is not None:
            _, grid = self.patch_scores(images)
            self.threshold = quantiles(grid.double(), [self.config.threshold_quantile], what="winclip threshold")[0]
        return self

    # -- persistence: the backbone is not fitted state ----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "config": self.config.model_dump(mode="json"),
            "weights": self.weights_source,
            "text_embeddings": self.text_embeddings.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = state.get("threshold", self.config.threshold)
        if state.get("text_embeddings") is not None:
            self.text_embeddings = state["text_embeddings"].to(self.device).float()


# -- building the real thing ----------------------------------------------------------------------
def encode_text_trimmed(model: nn.Module, tokens: Tensor) -> Tensor:
    """``model.encode_text(tokens)``, computed on the tokens up to the longest prompt's end.

    CLIP's text tower is causal and pools the end-of-text token, so the padding after the last
    end-of-text position cannot change the result; cutting the 77-token context to ~16 makes
    the 242-prompt ensemble about five times cheaper.  Models with another pooling or without a
    causal mask take the ordinary path.
    """
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None or not hasattr(model, "token_embedding"):
        return model.encode_text(tokens)
    end = tokens.argmax(dim=-1)
    length = int(end.max()) + 1
    x = model.token_embedding(tokens[:, :length]) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), end]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def build_winclip(config: WinClipConfig) -> WinClipMasker:
    """Load open_clip (weights rules of :mod:`fader_kit.maskers.weights`), embed the prompts, drop the text tower."""
    import open_clip

    model, source = load_open_clip_model(
        config.architecture,
        config.pretrained,
        weights=config.weights,
        allow_random_weights=config.allow_random_weights,
        offline=config.offline,
    )
    device = torch.device(config.device) if config.device else torch.device("cpu")
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(config.architecture)
    with torch.no_grad():
        text = class_text_embeddings(
            lambda prompts, clip=model: encode_text_trimmed(clip, tokenizer(prompts).to(device)), config.object_name
        )
    encoder = OpenClipWindowEncoder(model.visual, window_batch=config.window_batch)
    del model  # the text tower is not needed any more
    return WinClipMasker(config, encoder=encoder, text_embeddings=text, weights_source=source)


def make_winclip(category: str | None = None, **options: Any) -> WinClipMasker:
    """Factory registered as ``winclip``; options are :class:`WinClipConfig` fields.

    ``category`` (offered by the host: the dataset category being evaluated) sets the prompts'
    ``object_name`` through :func:`category_object_name` unless ``object_name`` is given."""
    options = dict(options)
    options.pop("seed", None)  # deterministic: nothing to seed
    for key in ("weights", "device"):
        if options.get(key) is not None:
            options[key] = str(options[key])
    if isinstance(options.get("scales"), list):
        options["scales"] = tuple(options["scales"])
    if category is not None and options.get("object_name") is None:
        options["object_name"] = category_object_name(category)
    return build_winclip(masker_config(WinClipConfig, "winclip", options))


@hookimpl
def register_maskers(register) -> None:
    register(
        "winclip",
        make_winclip,
        summary="WinCLIP zero-shot window scores (scales 2, 3 + image), prompt ensemble, harmonic mean",
        weights=f"hub:{ARCHITECTURE}/{PRETRAINED}",
        options=[*WinClipConfig.model_fields, "category", "seed"],
    )
