"""Turn a dataset spec into tensors, split them, and compute the standardisation statistics."""

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
    if table.classes is None:
        order = torch.randperm(n_rows, generator=generator)
        n_validation = max(1, round(n_rows * fraction))
        return Split(order[n_validation:].sort().values, order[:n_validation].sort().values)
    train_parts, validation_parts = [], []
    for class_index in range(len(table.classes)):
        members = torch.nonzero(table.targets == class_index).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_validation = round(len(members) * fraction)
        validation_parts.append(members[:n_validation])
        train_parts.append(members[n_validation:])
    return Split(torch.cat(train_parts).sort().values, torch.cat(validation_parts).sort().values)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and standard deviation; constant columns get a std of 1."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False) if features.shape[0] > 1 else torch.ones_like(mean)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def target_statistics(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of regression targets, each of shape (1,); constant: std 1."""
    return feature_statistics(targets.reshape(-1, 1))
