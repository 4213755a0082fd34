"""What each of the paper's tables measures: its maskers and its variants of the FADeR model.

A table's column names a head variant of :mod:`fader_kit.model.variants` (or ``None`` for plain EAR);
the head configuration comes from that one registry.  Every variant of a table is evaluated on
the same EAR U-Net and the same binary masks, so the columns of a table differ only in what the
column says.  A column keeps the name its results are stored under (table2's ``fader``, table3's
``ours``): both are aliases of the registry's ``paper``.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fader_kit.model.config import FaderConfig
from fader_kit.errors import ConfigError
from fader_kit.deploy.score_kinds import SCORE_NAMES
from fader_kit.model.variants import DEFAULT_HEAD_VARIANT, get_variant, is_core

EAR = "ear"  # the variant name of plain EAR (no head): the "before" of every "before -> after"
FADER = "fader"  # FADeR as the paper configures it (an alias of the registry's "paper")
CONTROL = "open_gates"  # FADeR's training with every skip kept open: what the head adds is measured against it


#: the head variants of the fader_head and coverage tables, in the order they were added (the order their stored
#: columns keep); named here, not read from the registry, so that defining the tables loads no plugin
_ADDED = (
    "paper", "calibrated", "ungated", "neighbours", "pseudo", "pseudo_calibrated", "open_gates", "focused",
    "pseudo_focused", "procedural", "procedural_focused", "ear_target", "stats", "encoder", "stats_ear", "encoder_ear",
    "stats_score_ear", "score_gates", "masked_gate_one", "score_gates_one", "score_gates_q95", "stats_ear_q95",
    "stats_calibrated", "stats_ear_all", "stats_score", "encoder_calibrated", "encoder_ear_one", "backbone",
    "backbone_ear", "score_gates_threshold", "score_gates_threshold_one", "stats_ear_one",
)


class Variant(BaseModel):
    """One column of a table: ``head=None`` is plain EAR; otherwise a head variant of the registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="the column's name, as results are stored and reported")
    title: str
    head: str | None = Field(default=None, description="the head variant's name or alias (fader_kit.model.variants)")

    @field_validator("head")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v in _ADDED and not is_core(v):
            return v  # a plugin's variant (the experiments): checked when its column runs, loading no plugin here
        if v is not None:
            get_variant(v)  # an unknown name fails when the table is defined, with the names
        return v

    @property
    def is_ear(self) -> bool:
        return self.head is None

    @property
    def fader(self) -> dict[str, Any] | None:
        """The head variant's changes to the profile's head configuration (None for plain EAR)."""
        return None if self.head is None else dict(get_variant(self.head).changes)

    def fader_config(self, base: FaderConfig) -> FaderConfig | None:
        """The profile's head configuration with this variant's changes (validated), or None."""
        return None if self.head is None else get_variant(self.head).apply(base)


class TableSpec(BaseModel):
    """A benchmark table: which maskers, which variants, which paper table to compare with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str
    maskers: tuple[str, ...]
    variants: tuple[Variant, ...]
    paper_data: str = Field(description="data set of the paper's numbers: mvtec or visa")
    layout: str = Field(description="report layout: 'pairs' (EAR -> FADeR per masker), 'columns' (one per variant) "
                        "or 'selection' (fader_kit_bench.selection_job)")
    default_variants: tuple[str, ...] | None = Field(
        None, description="the variants run when --variants is not given (None = every variant of the table)")
    kind: str = Field("model", description="the engine's job kind of every unit (fader_kit.engine.jobs)")

    def variant(self, name: str) -> Variant:
        """The column called ``name``, or the column whose head is the registry variant ``name``
        under any of its names (``paper`` finds table3's ``ours`` and table2's ``fader``)."""
        for v in self.variants:
            if v.name == name:
                return v
        try:
            wanted = get_variant(name).name
        except ConfigError:
            wanted = None
        for v in self.variants:
            if wanted is not None and v.head is not None and get_variant(v.head).name == wanted:
                return v
        hint = "" if wanted is not None else (
            " (a head variant of an uninstalled plugin? `fader-kit variants --all` lists the installed ones; the "
            "experiments come with the fader_kit_experiments plugin)")
        raise ConfigError(f"table {self.name} has no variant {name!r}; choose from "
                          f"{', '.join(v.name for v in self.variants)}{hint}")


_PAIR = (Variant(name=EAR, title="EAR"), Variant(name=FADER, title="FADeR_EAR", head="paper"))
#: FADeR's head variants beyond the paper (experiments and the control of fader_kit.model.variants), as table columns;
#: titled as HeadVariant.label titles them, so that defining the tables loads no plugin
_HEAD_VARIANTS = tuple(Variant(name=name, title=f"FADeR ({name})", head=name) for name in _ADDED if name != "paper")

TABLES: dict[str, TableSpec] = {
    "table2": TableSpec(
        name="table2", title="Table 2: FADeR on three pre-trained attentions (image / pixel AUROC)",
        maskers=("dino_vit", "plain_vit", "winclip"), variants=_PAIR, paper_data="mvtec", layout="pairs",
    ),
    "table3": TableSpec(
        name="table3", title="Table 3: ablation (image / pixel AUROC)",
        maskers=("patch_stats",),
        variants=(
            Variant(name=EAR, title="EAR (hard, image)"),
            Variant(name="vit", title="+ViT head, soft, nearest", head="vit"),
            Variant(name="hard", title="+MLP, hard, feature map", head="hard"),
            Variant(name="bilinear", title="+MLP, soft, bilinear", head="bilinear"),
            Variant(name="ours", title="+MLP, soft, nearest (ours)", head="paper"),
            Variant(name="sigmoid", title="+MLP, soft (sigmoid), nearest", head="sigmoid"),
        ),
        paper_data="mvtec", layout="columns",
    ),
    "fader_head": TableSpec(
        name="fader_head", title="FADeR head variants beyond the paper, one change at a time (image / pixel AUROC)",
        maskers=("patch_stats",),
        variants=(
            Variant(name=EAR, title="EAR"), Variant(name=FADER, title=get_variant("paper").label, head="paper"), *_HEAD_VARIANTS,
        ),
        paper_data="mvtec", layout="columns",
    ),
    "selection": TableSpec(
        name="selection", title="Detector selection: every score kind of every masker as a candidate of "
        "`fit --score auto` (test image / pixel AUROC)",
        maskers=("patch_stats", "msflow", "ami_net"),
        variants=tuple(Variant(name=k, title=f"{k} ({DEFAULT_HEAD_VARIANT} head)" if k == "fader" else k,
                               head=DEFAULT_HEAD_VARIANT) for k in SCORE_NAMES),
        paper_data="mvtec", layout="selection", kind="selection",
    ),
    "coverage": TableSpec(
        name="coverage", title="Coverage: EAR and FADeR on masks covering a controlled fraction of each defect "
        "(image / pixel AUROC)",
        maskers=("gt@0", "gt@25", "gt@50", "gt@75", "gt@100", "patch_stats"), variants=(*_PAIR, *_HEAD_VARIANTS),
        paper_data="mvtec", layout="pairs", default_variants=(EAR, FADER),
    ),
    "table4": TableSpec(
        name="table4", title="Table 4: FADeR on other single masking methods (image / pixel AUROC)",
        maskers=("dsr", "msflow", "ami_net"), variants=_PAIR, paper_data="mvtec", layout="pairs",
    ),
    "table5": TableSpec(
        name="table5", title="Table 5: VisA (image / pixel AUROC; the paper reports FADeR's image AUROC)",
        maskers=("patch_stats",), variants=_PAIR, paper_data="visa", layout="pairs",
    ),
}


def get_table(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise ConfigError(f"unknown table {name!r}; choose one of {', '.join(TABLES)} (or 'speed')") from None
