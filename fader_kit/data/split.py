"""What a loader returns (:class:`CategorySplit`) and how it fails (:class:`DataError`).

Every data source (MVTec AD, VisA, the synthetic generator) ends in the same object so that
training, scoring and benchmarks never care where the pixels came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from fader_kit.errors import UserError


class DataError(UserError, ValueError):
    """Bad or missing input data.  The message always names the offending file, folder or argument.

    A subclass of ``ValueError`` so that callers that already catch bad arguments catch this too;
    the CLI prints the message alone instead of a traceback.
    """


@dataclass
class CategorySplit:
    """One category of one data set, resized to ``image_size`` and ready for torch.

    ``train`` holds normal images only.  ``test`` is ordered normal images first, then each
    defect type in alphabetical order, each sorted by file name, so that the same folder always
    gives the same order.  ``masks`` are all False for normal test images.
    """

    dataset: str
    category: str
    image_size: int
    train: Tensor = field(repr=False)  # [N, 3, S, S] float32 in [0, 1]
    test: Tensor = field(repr=False)  # [M, 3, S, S] float32 in [0, 1]
    labels: Tensor = field(repr=False)  # [M] long: 0 normal, 1 anomalous
    masks: Tensor = field(repr=False)  # [M, 1, S, S] bool
    test_paths: list[str] = field(repr=False)
    defect_types: list[str] = field(repr=False)  # "good" for normal test images
    train_paths: list[str] = field(repr=False)

    def __post_init__(self) -> None:
        # Cheap consistency checks: a loader bug shows up here, not as a shape error deep in training.
        s = self.image_size
        n, m = len(self.train_paths), len(self.test_paths)
        expected = {
            "train": (self.train, (n, 3, s, s)),
            "test": (self.test, (m, 3, s, s)),
            "labels": (self.labels, (m,)),
            "masks": (self.masks, (m, 1, s, s)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"CategorySplit.{name} has shape {list(tensor.shape)}, expected {list(shape)}")
        if len(self.defect_types) != m:
            raise ValueError(f"CategorySplit.defect_types has {len(self.defect_types)} entries, expected {m}")

    @property
    def n_anomalous(self) -> int:
        return int(self.labels.sum())

    def __repr__(self) -> str:
        kinds = sorted(set(self.defect_types) - {"good"})
        return (
            f"CategorySplit({self.dataset}/{self.category}, size={self.image_size}, "
            f"train={len(self.train_paths)}, test={len(self.test_paths)} "
            f"({self.n_anomalous} anomalous: {', '.join(kinds) or 'none'}))"
        )
