"""What each of the paper's tables measures: its maskers and its variants of the FADeR model.

A *variant* is a named change to the FADeR head's configuration (or ``None`` for plain EAR).
Every variant of a table is evaluated on the same EAR U-Net and the same binary masks, so the
columns of a table differ only in what the column says.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fader_kit.config import HEAD_VARIANTS, FaderConfig

EAR = "ear"  # the variant name of plain EAR (no head): the "before" of every "before -> after"
FADER = "fader"  # FADeR as the paper configures it (soft mask, min-max, nearest Theta, MLP head)
CONTROL = "open_gates"  # FADeR's training with every skip kept open: what the head adds is measured against it


class Variant(BaseModel):
    """One column of a table: ``fader=None`` is plain EAR; otherwise FaderConfig overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str
    fader: dict[str, Any] | None = Field(default=None, description="FaderConfig fields changed from the profile's")

    @property
    def is_ear(self) -> bool:
        return self.fader is None

    def fader_config(self, base: FaderConfig) -> FaderConfig | None:
        """The profile's head configuration with this variant's changes (validated), or None."""
        if self.fader is None:
            return None
        return FaderConfig(**{**base.model_dump(), **self.fader})


class TableSpec(BaseModel):
    """A benchmark table: which maskers, which variants, which paper table to compare with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str
    maskers: tuple[str, ...]
    variants: tuple[Variant, ...]
    paper_data: str = Field(description="data set of the paper's numbers: mvtec or visa")
    layout: str = Field(description="report layout: 'pairs' (EAR -> FADeR per masker) or 'columns' (one per variant)")
    default_variants: tuple[str, ...] | None = Field(
        None, description="the variants run when --variants is not given (None = every variant of the table)")

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"table {self.name} has no variant {name!r}; choose from {', '.join(v.name for v in self.variants)}")


_PAIR = (Variant(name=EAR, title="EAR"), Variant(name=FADER, title="FADeR_EAR", fader={}))
#: FADeR's head variants beyond the paper (fader_kit.config.HEAD_VARIANTS), as table columns
_HEAD_VARIANTS = tuple(Variant(name=name, title=f"FADeR ({name})", fader=dict(changes))
                       for name, changes in HEAD_VARIANTS.items() if name != "paper")

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
            Variant(name="vit", title="+ViT head, soft, nearest", fader={"head": "vit"}),
            Variant(name="hard", title="+MLP, hard, feature map", fader={"masking": "hard"}),
            Variant(name="bilinear", title="+MLP, soft, bilinear", fader={"theta": "bilinear"}),
            Variant(name="ours", title="+MLP, soft, nearest (ours)", fader={}),
            Variant(name="sigmoid", title="+MLP, soft (sigmoid), nearest", fader={"normaliser": "sigmoid"}),
        ),
        paper_data="mvtec", layout="columns",
    ),
    "fader_head": TableSpec(
        name="fader_head", title="FADeR head variants beyond the paper, one change at a time (image / pixel AUROC)",
        maskers=("patch_stats",),
        variants=(
            Variant(name=EAR, title="EAR"), Variant(name=FADER, title="FADeR (paper)", fader={}), *_HEAD_VARIANTS,
        ),
        paper_data="mvtec", layout="columns",
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
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(TABLES)} (or 'speed')") from None
