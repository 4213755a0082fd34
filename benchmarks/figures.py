"""PNG figures of a benchmark (matplotlib, Agg backend: no display needed).

- :func:`unit_panel`: for chosen test images, the paper's Figure 1 and a bit more -- input with
  the ground-truth outline, binary mask M_B, FADeR's soft mask M_S, the EAR and FADeR
  reconstructions and their anomaly maps -- so "before -> after" can be seen, not only read.
- :func:`before_after_bars`: image and pixel AUROC per category, EAR next to each FADeR variant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fader_kit.data import CategorySplit  # noqa: E402
from fader_kit.model.fader import FaderModel  # noqa: E402
from fader_kit.model.scoring import anomaly_map  # noqa: E402


def choose_images(split: CategorySplit, n: int) -> list[int]:
    """Up to ``n`` anomalous test images, one per defect type first (deterministic: the first
    image of each type in the split's order), so a panel shows different kinds of defect."""
    firsts: list[int] = []
    seen: set[str] = set()
    for i, (label, kind) in enumerate(zip(split.labels.tolist(), split.defect_types)):
        if label == 1 and kind not in seen:
            seen.add(kind)
            firsts.append(i)
    rest = [i for i, label in enumerate(split.labels.tolist()) if label == 1 and i not in firsts]
    return (firsts + rest)[:n]


def _rgb(t: torch.Tensor) -> np.ndarray:
    return t.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def unit_panel(
    path: Path, ear: FaderModel, fader: FaderModel, split: CategorySplit, test_masks: torch.Tensor, *,
    n_images: int, device: torch.device | str, title: str, test_scores: torch.Tensor | None = None,
) -> Path | None:
    """Draw the panel for ``n_images`` chosen anomalous test images; None when there are none.
    ``test_scores``: the masker's score maps of the test images, for a head that reads them."""
    idx = choose_images(split, n_images)
    if not idx:
        return None
    x = split.test[idx].to(device)
    mb = test_masks[idx].to(device)
    scores = None if test_scores is None or not fader.needs_scores else test_scores[idx].to(device).float()
    ear.eval(), fader.eval()
    out_e = ear(x, mb)
    out_f = fader(x, mb, scores=scores)
    map_e = anomaly_map(x, out_e.reconstruction)
    map_f = anomaly_map(x, out_f.reconstruction)
    soft = F.interpolate(out_f.soft_mask, size=x.shape[-2:], mode="nearest")
    vmax = float(torch.maximum(map_e.amax(), map_f.amax()))
    cols = ["input + ground truth", "binary mask M_B", "soft mask M_S", "EAR reconstruction",
            "FADeR reconstruction", "EAR anomaly map", "FADeR anomaly map"]
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(2.1 * len(cols), 2.3 * len(idx) + 0.5), squeeze=False)
    for r, i in enumerate(idx):
        gt = split.masks[i, 0].numpy()
        row = [
            (_rgb(x[r]), {}), (mb[r, 0].float().cpu().numpy(), {"cmap": "gray", "vmin": 0, "vmax": 1}),
            (soft[r, 0].cpu().numpy(), {"cmap": "viridis", "vmin": 0, "vmax": 1}),
            (_rgb(out_e.reconstruction[r]), {}), (_rgb(out_f.reconstruction[r]), {}),
            (map_e[r, 0].cpu().numpy(), {"cmap": "inferno", "vmin": 0, "vmax": vmax}),
            (map_f[r, 0].cpu().numpy(), {"cmap": "inferno", "vmin": 0, "vmax": vmax}),
        ]
        for c, (img, kw) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest", **kw)
            if c in (0, 5, 6) and gt.any():
                ax.contour(gt, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r, 0].set_ylabel(split.defect_types[i], fontsize=8)
    fig.suptitle(f"{title}\nM_S: 0 = attenuated skip (expected defect), 1 = passed; anomaly maps share one scale", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def before_after_bars(
    path: Path, categories: Sequence[str], series: dict[str, dict[str, tuple[float | None, float | None]]], title: str,
) -> Path:
    """Grouped bars: for each category, one bar per series (e.g. ``EAR``, ``FADeR``), image AUROC
    on the left panel and pixel AUROC on the right.  ``series[name][category] = (image, pixel)``."""
    names = list(series)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.2 * len(categories) * max(len(names), 2) / 2 + 3), 3.6), squeeze=False)
    width = 0.8 / max(len(names), 1)
    xs = np.arange(len(categories))
    for k, (ax, label) in enumerate(zip(axes[0], ("image AUROC", "pixel AUROC"))):
        lows = []
        for j, name in enumerate(names):
            vals = [series[name].get(c, (None, None))[k] for c in categories]
            ys = np.array([v if v is not None else np.nan for v in vals], dtype=float)
            lows.extend(ys[~np.isnan(ys)].tolist())
            ax.bar(xs + (j - (len(names) - 1) / 2) * width, np.nan_to_num(ys, nan=0.0), width, label=name)
        ax.set_xticks(xs, categories, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        low = min(lows) if lows else 0.0
        ax.set_ylim(max(0.0, np.floor((low - 0.05) * 10) / 10), 1.0)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(names), 6), frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1 + 0.04 * ((len(names) - 1) // 6), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def coverage_curve(path: Path, points: dict[str, dict], variants: Sequence[str]) -> Path:
    """Image and pixel AUROC against the fraction of defect pixels the mask covers: one line per
    variant through the ``gt@C`` points, the maskers' own masks as labelled markers."""
    from fader_kit.engine.sources import parse_gt_masker

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    gt = sorted((m for m in points if parse_gt_masker(m) is not None), key=lambda m: parse_gt_masker(m))
    others = [m for m in points if parse_gt_masker(m) is None]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, ("image", "pixel")):
        for k, v in enumerate(variants):
            colour = colours[k % len(colours)]
            xs = [points[m]["coverage"] for m in gt if points[m][metric].get(v) is not None]
            ys = [points[m][metric][v] for m in gt if points[m][metric].get(v) is not None]
            if xs:
                ax.plot([100 * x for x in xs], ys, marker="o", color=colour, label=f"{v} (ground truth at C)")
            for m in others:
                y, x = points[m][metric].get(v), points[m]["coverage"]
                if y is not None and x is not None:
                    ax.scatter([100 * x], [y], marker="s", color=colour)
                    ax.annotate(m, (100 * x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("defect pixels covered by the mask (%)")
        ax.set_ylabel(f"{metric} AUROC")
        ax.set_xlim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("EAR and FADeR against mask coverage (squares: maskers' own masks)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
