"""Turn a dataset spec into tensors, split them, and compute the standardisation statistics."""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from app.training.spec import (
    DatasetSpec,
    InlineDataset,
    SyntheticClassificationDataset,
    SyntheticLinearDataset,
    Task,
)

Label = int | float | str

# Rows gathered at a time when statistics stream over a subset: 65,536 x 50 float64 is 26 MB.
STATISTICS_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class LinearTruth:
    """The parameters a synthetic linear dataset was drawn from."""

    w: list[float]
    b: float


@dataclass(frozen=True)
class Table:
    """Features (float32, rows x features) and targets (float32 values or int64 class indices)."""

    features: torch.Tensor
    targets: torch.Tensor
    classes: list[Label] | None = None
    truth: LinearTruth | None = None
    feature_names: list[str] | None = None

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self.features.shape[1])

    @property
    def n_outputs(self) -> int:
        """Width of the network's output: one per class, or one for regression."""
        return len(self.classes) if self.classes is not None else 1


@dataclass(frozen=True)
class Split:
    """Row indices of the training and validation parts."""

    train: torch.Tensor
    validation: torch.Tensor


@dataclass(frozen=True)
class RowSubset:
    """Rows of a matrix by index, or all of them in order (index None), never copied whole."""

    matrix: torch.Tensor
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.matrix.shape[0] if self.index is None else self.index.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the rows are."""
        return self.matrix.device

    def take(self, positions: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The subset's rows at these positions: one gather from the matrix (into `out`)."""
        # index_select, not indexing: the same rows, gathered several times faster.
        rows = positions if self.index is None else self.index.index_select(0, positions)
        return torch.index_select(self.matrix, 0, rows, out=out)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """The subset's rows in order, `size` at a time; gathered ones are overwritten by the next.

        All rows come as views. Indexed rows are gathered into one buffer for all chunks: a
        new chunk each time, among the smaller tensors the caller keeps, fragments the heap
        until it holds several chunks' worth.
        """
        if self.index is None:
            yield from torch.split(self.matrix, size)
            return
        buffer = self.matrix.new_empty((min(size, len(self)), *self.matrix.shape[1:]))
        for start in range(0, len(self), size):
            index = self.index[start : start + size]
            yield torch.index_select(self.matrix, 0, index, out=buffer[: len(index)])


def label_order(labels: list[Label]) -> list[Label]:
    """The sorted distinct labels: numbers first in numeric order, then strings."""
    return sorted(set(labels), key=lambda label: (isinstance(label, str), label))


def encode_labels(labels: list[Label]) -> tuple[torch.Tensor, list[Label]]:
    """Map labels to class indices; returns the indices and the class order."""
    classes = label_order(labels)
    index = {label: position for position, label in enumerate(classes)}
    return torch.tensor([index[label] for label in labels], dtype=torch.int64), classes


def synthetic_linear(spec: SyntheticLinearDataset) -> Table:
    """d2l's synthetic_data: X ~ N(0, 1), y = Xw + b + noise."""
    generator = torch.Generator().manual_seed(spec.seed)
    true_w = torch.tensor(spec.true_w, dtype=torch.float32)
    features = torch.normal(0.0, 1.0, (spec.n_samples, len(spec.true_w)), generator=generator)
    targets = features @ true_w + spec.true_b
    targets += spec.noise * torch.randn(targets.shape, generator=generator)
    return Table(features, targets, truth=LinearTruth(list(spec.true_w), spec.true_b))


def synthetic_classification(spec: SyntheticClassificationDataset) -> Table:
    """Gaussian blobs with centres drawn in [-5, 5] and the given spread."""
    generator = torch.Generator().manual_seed(spec.seed)
    centres = torch.rand((spec.n_classes, spec.n_features), generator=generator) * 10 - 5
    targets = torch.arange(spec.n_samples) % spec.n_classes
    targets = targets[torch.randperm(spec.n_samples, generator=generator)]
    noise = torch.randn((spec.n_samples, spec.n_features), generator=generator) * spec.spread
    return Table(centres[targets] + noise, targets, classes=list(range(spec.n_classes)))


def inline(spec: InlineDataset, task: Task) -> Table:
    """Rows sent with the request."""
    features = torch.tensor(spec.features, dtype=torch.float32)
    if task == "classification":
        targets, classes = encode_labels(list(spec.targets))
        return Table(features, targets, classes=classes)
    return Table(features, torch.tensor(spec.targets, dtype=torch.float32))


def materialize(dataset: DatasetSpec, task: Task) -> Table:
    """Build the table a dataset spec describes."""
    match dataset:
        case SyntheticLinearDataset():
            return synthetic_linear(dataset)
        case SyntheticClassificationDataset():
            return synthetic_classification(dataset)
        case InlineDataset():
            return inline(dataset, task)
    raise TypeError(f"unknown dataset type {type(dataset).__name__}")


def split_rows(table: Table, *, fraction: float, seed: int) -> Split:
    """Hold out a seeded fraction of rows; stratified by class for classification."""
    n_rows = table.features.shape[0]
    if fraction == 0:
        return Split(torch.arange(n_rows), torch.empty(0, dtype=torch.int64))
    generator = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(n_rows, dtype=torch.bool)
    if table.classes is None:
        n_validation = max(1, round(n_rows * fraction))
        held_out[torch.randperm(n_rows, generator=generator)[:n_validation]] = True
    else:
        for class_index in range(len(table.classes)):
            members = torch.nonzero(table.targets == class_index).flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            held_out[members[: round(len(members) * fraction)]] = True
    # A mask gives both parts' rows in order without sorting (and copying) the larger one.
    return Split(torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten())


def feature_statistics(
    features: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    chunk_rows: int = STATISTICS_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and standard deviation of the rows (all by default); constant: std 1."""
    if rows is None or len(rows) <= chunk_rows:
        # The whole matrix reduces in place and a small subset is one gather: torch's float32
        # reductions, the numbers these statistics have always had.
        part = features if rows is None else features[rows]
        mean = part.mean(dim=0)
        std = part.std(dim=0, unbiased=False) if part.shape[0] > 1 else torch.ones_like(mean)
    else:
        mean, std = _streamed_statistics(RowSubset(features, rows).chunks(chunk_rows))
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _streamed_statistics(chunks: Iterator[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std from float64 sums over chunks, shifted by the first chunk's mean.

    The shift keeps the sum of squares from cancelling against a large mean, and makes a
    constant column's sums exactly zero (so its std is exactly zero).
    """
    head = next(chunks)
    # One float64 block for every chunk, for the reason RowSubset.chunks gives.
    block = torch.empty(head.shape, dtype=torch.float64, device=head.device)
    shift = block.copy_(head).mean(dim=0)
    total, squares, n_rows = torch.zeros_like(shift), torch.zeros_like(shift), 0
    for chunk in itertools.chain([head], chunks):
        centred = block[: chunk.shape[0]].copy_(chunk).sub_(shift)
        total += centred.sum(dim=0)
        squares += centred.square_().sum(dim=0)
        n_rows += chunk.shape[0]
    mean = total / n_rows
    variance = (squares / n_rows - mean**2).clamp_(min=0)
    return (shift + mean).to(head.dtype), variance.sqrt().to(head.dtype)


def target_statistics(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of regression targets, each of shape (1,); constant: std 1."""
    return feature_statistics(targets.reshape(-1, 1))
