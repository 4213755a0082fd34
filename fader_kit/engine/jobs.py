"""Job kinds: what one unit of a grid computes, as a registered, self-describing kind.

The engine plans a grid, runs it on an executor and writes one row per unit into one store; *what*
a unit computes is its job kind's business.  A :class:`JobKind` declares

- its **keys** (:meth:`JobKind.keys`): the masks, EAR and work keys of one unit -- the work key
  holds exactly the settings its row depends on, so a rerun skips a finished row;
- how to **run one unit** (:meth:`JobKind.compute`): the stored row and the per-image score
  details to keep beside it;
- its **typed row** (:attr:`JobKind.facts`): a pydantic model of what the row carries besides the
  common columns (``ResultRow.config``), so readers use fields, never string keys;
- what it **costs** before the work starts (:meth:`JobKind.trains_models`, for the pace estimate).

How rows of several seeds aggregate is one function for every kind
(:func:`fader_kit.engine.aggregate.over_seeds`).  A grid names the kind of each of its heads
(``Head.kind``); the runner resolves the names in this registry when it is built, and hands the
resolved kinds to every executor (a Ray task receives the objects, so a kind defined outside the
package travels by module name).  Built-in kinds: ``model`` (EAR or a FADeR head, scored) and
``masker`` (the masker alone), in :mod:`fader_kit.engine.unit_kinds`; the benchmarks add their
probes.  Adding a kind: subclass :class:`JobKind`, give it a ``name`` and a ``facts`` model, and
call :func:`register_job_kind` at import.
"""
from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fader_kit.model.config import FaderConfig, Profile, TrainConfig
from fader_kit.data import SyntheticConfig
from fader_kit.errors import ConfigError
from fader_kit.model.fusion_rules import Fused
from fader_kit.engine.sources import MaskSource
from fader_kit.engine.store import ResultRow, UnitId
from fader_kit.engine.workbench import CategoryWorkbench, UnitKeys

F = TypeVar("F", bound="RowFacts")


class Head(BaseModel):
    """One model (or measurement) of a grid: ``kind`` names its registered job kind (``model``: plain
    EAR when ``config`` is None, else the FADeR head of that configuration; ``masker``: the masker
    alone, no U-Net)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str = "model"
    title: str = ""
    config: FaderConfig | None = None
    train: TrainConfig | None = Field(None, description="FADeR training settings (None: the profile's)")


class Grid(BaseModel):
    """Everything a grid run needs; picklable, so it travels to Ray workers as it is."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    table: str
    out: Path
    data: str
    categories: tuple[str, ...]
    sources: tuple[Any, ...] = Field(description="MaskSource values (fader_kit.engine.sources)")
    heads: tuple[Head, ...]
    seeds: tuple[int, ...] = (0,)
    profile: Profile
    device: str = "cpu"
    ear_masks: Literal["blobs", "masker"] = "blobs"
    synthetic: SyntheticConfig | None = None
    data_seed: int = 0
    figures: int = Field(0, ge=0, description="anomalous test images per figure panel (0 = none)")
    fused: Fused = Field(
        False, description="also score each model's map fused with the masker's score map: True or a rule of "
        "fader_kit.model.fusion.fit_fusion (True = the default, fader_kit.model.fusion.DEFAULT_FUSION_RULE)")
    save_models: bool = Field(False, description="keep each FADeR model under <out>/models/<work key>.pt")
    progress: bool = False


@dataclass
class PlannedUnit:
    """One unit of a grid: its identity (the row's), mask source, head and keys."""

    unit: UnitId
    source: MaskSource
    head: Head
    keys: UnitKeys

    @property
    def work_key(self) -> str:
        return self.keys.work


class RowFacts(BaseModel):
    """What a job kind's row carries besides the common columns, typed (stored as ``ResultRow.config``).

    Fields a row lacks keep their defaults; fields the model does not declare are kept as they are
    (``extra="allow"``), so rows written by an older version still read."""

    model_config = ConfigDict(extra="allow")

    trained: dict[str, int] = Field({}, description="what the unit fitted or trained (maskers_fitted, ear_trained)")

    @classmethod
    def of(cls: type[F], row: ResultRow) -> F:
        """The typed facts of a stored row; a row whose stored facts do not read (written by another
        version, or edited) is one clear error naming the row and what to do."""
        try:
            return cls.model_validate(row.config)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise ConfigError(
                f"results row {row.unit.label()}: its stored facts do not read as {cls.__name__} ({problems}); "
                "rerun into a new --out folder, or delete the folder's results.sqlite to recompute its rows "
                "(the cache/ folder is reused)") from None

    def stored(self) -> dict[str, Any]:
        """The row's ``config`` as stored: the fields that were set (and any extra ones), as JSON values;
        nested models whole."""
        keep = self.model_fields_set | set(self.model_extra or {})
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keep}


class FailedFacts(RowFacts):
    """A failed row: the keys it would have had and where it failed."""

    masker_key: str = ""
    ear_key: str = ""
    traceback: str | None = None


class UnitContext(Protocol):
    """What a job kind may use of the runner that computes its unit (the serial runner, or the
    runner a Ray task builds)."""

    grid: Grid
    out: Path
    figure: Any
    measure: Any

    def row_base(self, pu: PlannedUnit) -> dict[str, Any]: ...

    def prepare_masks(self, pu: PlannedUnit, bench: CategoryWorkbench) -> None: ...


class JobKind(ABC):
    """One kind of unit (see the module docstring)."""

    name: ClassVar[str]
    facts: ClassVar[type[RowFacts]] = RowFacts
    needs_unet: ClassVar[bool] = True  # the Ray executor schedules the EAR task before the unit
    needs_masks: ClassVar[bool] = True  # ... and the masker's fit and masks (False: the unit fits what it needs)

    @abstractmethod
    def keys(self, bench: CategoryWorkbench, source: MaskSource, head: Head, context: UnitContext) -> UnitKeys:
        """The unit's keys (masks, EAR, work)."""

    @abstractmethod
    def compute(self, context: UnitContext, pu: PlannedUnit, bench: CategoryWorkbench
                ) -> tuple[ResultRow, dict[str, Any]]:
        """One unit's row and the score details to store beside it (raise on failure: the runner
        records the failed row)."""

    def scores_model(self, pu: PlannedUnit) -> bool:
        """Whether the unit trains (or reuses) an EAR U-Net, trains its head if it has one, and scores
        the model: what the pace estimate counts before a long job."""
        return self.needs_unet


def failed_facts(pu: PlannedUnit, exc: BaseException | str) -> dict[str, Any]:
    """A failed row's ``config``: its keys, and the traceback when there is one."""
    if isinstance(exc, BaseException):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return FailedFacts(masker_key=pu.keys.masks, ear_key=pu.keys.ear, traceback=tb).stored()
    return FailedFacts(masker_key=pu.keys.masks, ear_key=pu.keys.ear).stored()


_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    """Register ``kind`` under its name (a second registration of the same class replaces the first:
    a module imported twice, in a notebook say)."""
    old = _KINDS.get(kind.name)
    if old is not None and type(old).__qualname__ != type(kind).__qualname__:
        raise ConfigError(f"job kind {kind.name!r} is already registered by {type(old).__module__}")
    _KINDS[kind.name] = kind
    return kind


def job_kind(name: str) -> JobKind:
    """The registered job kind ``name``; a clear error listing the known ones."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown job kind {name!r} (registered: {', '.join(sorted(_KINDS)) or 'none'}); "
                          "import the module that registers it first") from None


def job_kinds() -> list[str]:
    return sorted(_KINDS)


__all__ = ["FailedFacts", "Head", "JobKind", "PlannedUnit", "RowFacts", "UnitContext", "failed_facts", "job_kind", "job_kinds",
           "register_job_kind"]
