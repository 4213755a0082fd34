"""Synthetic defects on normal images: the test set for choosing a detector without labels.

A detector is chosen by how well it separates held-out normal images from *the same images* with
synthetic defects.  One kind of defect would favour the detector that happens to see that kind
best, so there are several, each unlike the others:

- ``cutpaste``: a patch of *another* image (random size, aspect and rotation) pasted in;
- ``scratch``: a thin dark or bright line or curve;
- ``blob``: a Perlin-noise-shaped region (as DRAEM's synthetic anomalies) filled with a foreign
  colour and texture, blended with the image;
- ``deform``: a smooth local warp of the image itself (bulge, pinch, swirl or shift), no new colour.

Every generator is a pure function ``(images, generator, size=...) -> (defective, masks)``:
``images`` ``[B, C, H, W]`` float in ``[0, 1]`` on any device, ``generator`` a CPU
``torch.Generator`` (all randomness comes from it, so the same seed gives the same defects on every
device), ``masks`` ``[B, 1, H, W]`` bool, never empty; pixels outside a mask are left untouched.
``size`` is the defect's extent as a fraction of the image side (:data:`DEFAULT_SIZE`; each image
draws its own size between half and one and a half times it).

A detector whose learned part was trained on pseudo-anomalies must not be judged on the same kind
of defect: :data:`HEAD_SOURCE_KINDS` says which kinds the FADeR head's own pseudo-anomalies
(:func:`fader_kit.model.training.paste_pseudo_anomalies`) stand for, and a selection candidate declares
the kinds it trained on (:mod:`fader_kit.deploy.selection`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fader_kit.errors import ConfigError
from fader_kit.maskers.interfaces import check_images

DEFAULT_SIZE = 0.08
"""Default defect extent: 8 % of the image side (10 px at 128 px).  Chosen on the development
categories of the selection study (docs/results/detector-selection.md): the mean over all kinds
ranked the maskers as their test AUROC did as well at 0.08 as at 0.3 and better than at 0.15."""

Generator = Callable[..., tuple[Tensor, Tensor]]


def _u(g: torch.Generator, lo: float, hi: float, n: int = 1) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coords(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in pixels, each ``[H, W]``."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return y, x


def _sizes(g: torch.Generator, n: int, size: float, side: int) -> Tensor:
    """Per-image defect extent in pixels: ``size`` x side, varied by a factor in [0.5, 1.5]."""
    if not 0.0 < size <= 1.0:
        raise ConfigError(f"argument size={size!r} must be a fraction of the image side in (0, 1]")
    return (size * side * _u(g, 0.5, 1.5, n)).clamp_min(2.0)


def _finish(images: Tensor, defective: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Defective pixels inside the masks, the original ones outside (so nothing leaks)."""
    masks = masks.to(images.device)
    return torch.where(masks, defective.clamp(0.0, 1.0).to(images.dtype), images), masks


def perlin_noise(h: int, w: int, cells: int, g: torch.Generator) -> Tensor:
    """Gradient (Perlin) noise ``[H, W]`` in about ``[-1, 1]``: random unit gradients on a
    ``cells x cells`` lattice, each pixel the quintic-faded blend of its four corners' dot products."""
    angles = 2 * math.pi * torch.rand(cells + 1, cells + 1, generator=g)
    grads = torch.stack((torch.cos(angles), torch.sin(angles)), -1)
    y, x = _coords(h, w)
    fy, fx = y / h * cells, x / w * cells
    iy, ix = fy.floor().long().clamp(max=cells - 1), fx.floor().long().clamp(max=cells - 1)
    ty, tx = fy - iy, fx - ix

    def corner(dy: int, dx: int) -> Tensor:
        gr = grads[iy + dy, ix + dx]
        return gr[..., 0] * (ty - dy) + gr[..., 1] * (tx - dx)

    def fade(t: Tensor) -> Tensor:
        return t * t * t * (t * (6 * t - 15) + 10)

    top = torch.lerp(corner(0, 0), corner(0, 1), fade(tx))
    bottom = torch.lerp(corner(1, 0), corner(1, 1), fade(tx))
    return math.sqrt(2.0) * torch.lerp(top, bottom, fade(ty))


def cutpaste(images: Tensor, generator: torch.Generator, size: float = DEFAULT_SIZE) -> tuple[Tensor, Tensor]:
    """A rotated rectangle cut from *another* image of the batch (image ``i`` takes from ``i + 1``,
    wrapping; a batch of one uses a shifted copy of itself) pasted at a random place.  The rectangle's
    area is about ``size**2`` of the image, its aspect between 1:3 and 3:1."""
    images = check_images(images)
    b, _, h, w = images.shape
    y, x = _coords(h, w)
    ext = _sizes(generator, b, size, min(h, w))
    masks = torch.zeros(b, 1, h, w, dtype=torch.bool)
    shifts = torch.zeros(b, 2)
    for i in range(b):
        aspect = math.exp(float(_u(generator, -math.log(3), math.log(3))))
        half_h, half_w = float(ext[i]) / 2 * aspect**0.5, float(ext[i]) / 2 / aspect**0.5
        angle = float(_u(generator, 0.0, math.pi))
        cy, cx = float(_u(generator, 0.15, 0.85)) * h, float(_u(generator, 0.15, 0.85)) * w
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        masks[i, 0] = (u.abs() <= half_w) & (v.abs() <= half_h)
        masks[i, 0, min(h - 1, int(cy)), min(w - 1, int(cx))] = True
        shifts[i] = _u(generator, -0.35, 0.35, 2) * torch.tensor([h, w])
    donors = torch.roll(images, -1, 0) if b > 1 else images
    pasted = torch.stack([torch.roll(donors[i], (int(shifts[i, 0]), int(shifts[i, 1])), (1, 2)) for i in range(b)])
    if b == 1:  # the image itself: only the shift makes the patch foreign
        pasted = torch.roll(pasted, (h // 3, w // 3), (2, 3))
    return _finish(images, pasted, masks)


def _curve_distance(g: torch.Generator, h: int, w: int, length: float) -> Tensor:
    """Distance in pixels from every pixel to a random quadratic Bezier curve of about ``length``."""
    y, x = _coords(h, w)
    centre = torch.stack((_u(g, 0.2, 0.8)[0] * h, _u(g, 0.2, 0.8)[0] * w))
    angle = float(_u(g, 0.0, math.pi))
    d = torch.tensor([math.sin(angle), math.cos(angle)]) * length / 2
    bend = torch.tensor([-d[1], d[0]]) * float(_u(g, -0.6, 0.6))
    p0, p2, p1 = centre - d, centre + d, centre + bend
    t = torch.linspace(0, 1, max(8, int(length)))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # [T, 2]
    dist = (y[None] - pts[:, 0, None, None]) ** 2 + (x[None] - pts[:, 1, None, None]) ** 2
    return dist.amin(0).sqrt()


def scratch(images: Tensor, generator: torch.Generator, size: float = DEFAULT_SIZE) -> tuple[Tensor, Tensor]:
    """A thin curved line of length about ``2 * size`` of the image side, 1-3 px wide at 128 px
    (scaled with the image), dark or bright, painted over the image with opacity 0.7-1."""
    images = check_images(images)
    b, c, h, w = images.shape
    ext = _sizes(generator, b, size, min(h, w))
    masks = torch.zeros(b, 1, h, w, dtype=torch.bool)
    paint = torch.zeros(b, c, 1, 1)
    alpha = _u(generator, 0.7, 1.0, b)
    for i in range(b):
        width = float(_u(generator, 0.5, 1.5)) * max(1.0, min(h, w) / 128)
        masks[i, 0] = _curve_distance(generator, h, w, 2 * float(ext[i])) <= width
        bright = float(_u(generator, 0.0, 1.0)) < 0.5
        tone = _u(generator, 0.85, 1.0) if bright else _u(generator, 0.0, 0.15)
        paint[i] = (tone + _u(generator, -0.05, 0.05, c)).view(c, 1, 1)
    a = alpha.view(b, 1, 1, 1).to(images)
    return _finish(images, (1 - a) * images + a * paint.to(images), masks)


def _blob_mask(g: torch.Generator, h: int, w: int, radius: float) -> Tensor:
    """A connected, irregular region of radius about ``radius``: Perlin noise plus a radial falloff
    around a random centre, thresholded; the centre pixel is always inside."""
    y, x = _coords(h, w)
    cy, cx = float(_u(g, 0.2, 0.8)) * h, float(_u(g, 0.2, 0.8)) * w
    r = ((y - cy) ** 2 + (x - cx) ** 2).sqrt() / radius
    cells = max(2, round(min(h, w) / max(radius, 1.0)))
    field = 1.0 - r + 0.6 * perlin_noise(h, w, cells, g)
    mask = field > 0.2
    mask[min(h - 1, int(cy)), min(w - 1, int(cx))] = True
    return mask


def blob(images: Tensor, generator: torch.Generator, size: float = DEFAULT_SIZE) -> tuple[Tensor, Tensor]:
    """A Perlin-shaped region about ``size`` of the image side across, filled with a foreign
    texture (Perlin noise through two random colours, or the image colour-inverted / shifted)
    blended in with weight 0.5-1, as DRAEM's synthetic anomalies but local."""
    images = check_images(images)
    b, c, h, w = images.shape
    ext = _sizes(generator, b, size, min(h, w))
    masks = torch.zeros(b, 1, h, w, dtype=torch.bool)
    fill = torch.empty(b, c, h, w)
    beta = _u(generator, 0.5, 1.0, b)
    for i in range(b):
        masks[i, 0] = _blob_mask(generator, h, w, float(ext[i]) / 2)
        t = (perlin_noise(h, w, int(torch.randint(2, 9, (1,), generator=generator)), generator) + 1) / 2
        lo, hi = torch.rand(c, 1, 1, generator=generator), torch.rand(c, 1, 1, generator=generator)
        texture = lo + (hi - lo) * t.clamp(0, 1)
        if float(_u(generator, 0.0, 1.0)) < 0.3:  # the image's own structure, recoloured
            shift = (torch.rand(c, 1, 1, generator=generator) - 0.5) * 0.8
            texture = (1 - images[i].cpu().float()) if shift.sum() > 0 else images[i].cpu().float() + shift
        fill[i] = texture
    bt = beta.view(b, 1, 1, 1).to(images)
    return _finish(images, (1 - bt) * images + bt * fill.to(images), masks)


def _displacement(g: torch.Generator, h: int, w: int, radius: float) -> Tensor:
    """A smooth displacement field ``[H, W, 2]`` in pixels (x, y), zero far from a random centre:
    a bulge, pinch, swirl or shift under a Gaussian window of ``radius``."""
    y, x = _coords(h, w)
    cy, cx = float(_u(g, 0.2, 0.8)) * h, float(_u(g, 0.2, 0.8)) * w
    dy, dx = y - cy, x - cx
    win = torch.exp(-(dx**2 + dy**2) / (2 * (radius / 2) ** 2))
    amp = float(_u(g, 0.25, 0.45))
    mode = int(torch.randint(0, 4, (1,), generator=g))
    if mode == 0:  # bulge: sample closer to the centre
        field = (-amp * dx * win, -amp * dy * win)
    elif mode == 1:  # pinch
        field = (amp * dx * win, amp * dy * win)
    elif mode == 2:  # swirl
        field = (-amp * dy * win, amp * dx * win)
    else:  # shift along a random direction
        a = float(_u(g, 0.0, 2 * math.pi))
        field = (amp * radius * math.cos(a) * win, amp * radius * math.sin(a) * win)
    return torch.stack(field, -1)


def deform(images: Tensor, generator: torch.Generator, size: float = DEFAULT_SIZE) -> tuple[Tensor, Tensor]:
    """The image warped smoothly (``grid_sample``, bilinear, border padding) in a region about
    ``size`` of the image side across; the mask is where pixels moved by at least one pixel."""
    images = check_images(images)
    b, _, h, w = images.shape
    ext = _sizes(generator, b, size, min(h, w))
    y, x = _coords(h, w)
    disp = torch.stack([_displacement(generator, h, w, float(ext[i])) for i in range(b)])  # [B, H, W, 2]
    masks = (disp.norm(dim=-1) >= 1.0).unsqueeze(1)
    for i in range(b):  # a tiny size can stay under one pixel: keep the largest move
        if not masks[i].any():
            flat = int(disp[i].norm(dim=-1).argmax())
            masks[i, 0].view(-1)[flat] = True
    sx, sy = x + disp[..., 0], y + disp[..., 1]
    grid = torch.stack((2 * sx / w - 1, 2 * sy / h - 1), -1).to(images)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _finish(images, warped, masks)


@dataclass(frozen=True)
class DefectKind:
    """A named kind of synthetic defect and its generator."""

    name: str
    generate: Generator
    summary: str


KINDS: dict[str, DefectKind] = {
    k.name: k
    for k in (
        DefectKind("cutpaste", cutpaste, "a rotated patch of another image pasted in"),
        DefectKind("scratch", scratch, "a thin dark or bright line or curve"),
        DefectKind("blob", blob, "a Perlin-shaped foreign colour / texture blended in"),
        DefectKind("deform", deform, "a smooth local warp of the image itself"),
    )
}
DEFAULT_KINDS: tuple[str, ...] = tuple(KINDS)

HEAD_SOURCE_KINDS: dict[str, tuple[str, ...]] = {
    "image": ("cutpaste",),  # a colour-shifted square of another training image
    "procedural": ("cutpaste", "blob"),  # a square of procedural texture: pasted, foreign texture
}
"""The pseudo-defect kinds that the FADeR head's pseudo-anomaly sources (``pseudo_source``) stand
for: a candidate whose head trained on a source must not be judged on these kinds."""


def check_kinds(kinds: tuple[str, ...] | list[str], argument: str = "kinds") -> tuple[str, ...]:
    """``kinds`` as a tuple, each a registered kind (:data:`KINDS`), else a :class:`ConfigError`."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"argument {argument}: unknown pseudo-defect kind(s) {unknown}; known: {sorted(KINDS)}")
    return tuple(kinds)


def make_defects(kind: str, images: Tensor, seed: int, size: float = DEFAULT_SIZE) -> tuple[Tensor, Tensor]:
    """Defects of the registered ``kind`` on ``images``, drawn from ``seed`` (same seed, same defects)."""
    (name,) = check_kinds([kind], "kind")
    g = torch.Generator().manual_seed(int(seed))
    return KINDS[name].generate(images, g, size=size)
