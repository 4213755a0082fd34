"""The model card (``README.md``) of a detector folder: what it was trained on, how, and how its
thresholds were set -- what someone receiving the folder needs before putting it on a line."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fader_kit.deploy.thresholds import Calibration
    from fader_kit.deploy.manifest import Manifest


def model_card(manifest: "Manifest", calibration: "Calibration", selection: str | None = None) -> str:
    """The card's Markdown; ``selection``: the table of the candidates ``fit --score auto`` compared
    (:meth:`fader_kit.deploy.auto_select.SearchReport.text`), given its own section."""
    s, t, c = manifest.settings, manifest.training, calibration
    seconds = ", ".join(f"{k} {v:.1f}s" for k, v in t.seconds.items())
    options = ", ".join(f"{k}={v}" for k, v in s.masker_options.items()) or "defaults"
    lines = [
        "# fader-kit detector",
        "",
        f"Fitted with {manifest.created_by} on {t.created_at} ({t.device}). Load it with "
        "`fader_kit.Detector.load(folder)` or run `fader-kit predict <folder> IMAGES... --out DIR`.",
        "",
        "## Data",
        f"- normal images: {t.n_images} under `{t.normal_folder}`; {t.n_train} trained on, {t.n_holdout} held out "
        f"(seed {s.seed}, share {s.holdout:g}) to calibrate",
        f"- images are converted to RGB and resized to {s.image_size}x{s.image_size} px",
        "",
        "## Settings",
        f"- score `{s.score}`: {s.kind.summary}{_fusion_note(calibration)}",
        f"- profile `{s.profile}`, masker `{s.masker}` ({options}; weights: {t.masker_info.get('weights', '?')}), "
        + (f"FADeR head variant `{s.fader_variant}`, " if s.kind.head else "")
        + (f"EAR masks `{s.ear_masks}`, " if s.kind.unet else "") + f"seed {s.seed}",
        f"- training time: {seconds}",
        "",
        "## Calibration",
        f"- image threshold {c.image_threshold:.6g} at false-alarm rate {c.false_alarm_rate:g}: rests on "
        f"{c.n_images} held-out normal images, {c.normal_false_alarm_rate:.3f} of them flagged",
        f"- pixel threshold {c.pixel_threshold:.6g} at the same rate, from {c.n_pixels} pixels of those images",
        f"- normalised score = 0.5 + 0.5 (score - {c.image_threshold:.6g}) / ({c.image_threshold:.6g} - "
        f"{c.low:.6g}), clipped to [0, 1]: the threshold sits at 0.5",
    ]
    if c.validation is not None:
        v = c.validation
        lines.append(f"- validation `{v.folder}` ({v.n_normal} normal, {v.n_defective} defective): image AUROC "
                     f"{v.image_auroc:.3f}" + (f", pixel AUROC {v.pixel_auroc:.3f}" if v.pixel_auroc is not None else "")
                     + f"; F1-optimal threshold {v.f1_threshold:.6g} (F1 {v.f1:.3f})")
    lines += [f"- warning: {w}" for w in c.warnings]
    if selection is not None:
        lines += ["", "## Detector selection", "", f"`fit` compared these candidates and kept `{s.masker}/{s.score}` "
                  "(`selection.json` holds the same table):", "", selection]
    lines += ["", "## Versions", *[f"- {k}: {v}" for k, v in manifest.environment.items()],
              f"- detector format: {manifest.format} version {manifest.format_version}", ""]
    return "\n".join(lines)


def _fusion_note(calibration: "Calibration") -> str:
    f = calibration.fusion
    if f is None:
        return ""
    mix = (f"{f.weight:g} x EAR + {1 - f.weight:g} x masker" if f.rule == "weighted" else f"rule {f.rule}")
    return (f" ({mix}, each map as (map - median) / (q{f.masker.quantile:g} - median) of its normal training "
            f"pixels: EAR {f.reconstruction.centre:.4g} / {f.reconstruction.scale:.4g}, masker {f.masker.centre:.4g} / "
            f"{f.masker.scale:.4g})")
