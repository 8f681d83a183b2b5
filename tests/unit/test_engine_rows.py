"""Training and validating on row indices into the table, never on copies of its parts."""

import subprocess
import sys
from typing import Any

import pytest
import torch

from app.training.data import (
    Table,
    feature_statistics,
    materialize,
    split_rows,
)
from app.training.engine import Trainer
from app.training.spec import RunRequest, resolve_spec
from tests.helpers import D2L_SPEC, long_spec
from tests.unit.test_engine import Recorder

STORED = {"type": "dataset", "id": 1, "target": "y"}


def scaled_table(n_rows: int, seed: int = 0) -> Table:
    """A regression table of features on very different scales, away from zero."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1e-3, 0.1, 1.0, 10.0, 1e3, 3.0])
    features = torch.randn(n_rows, len(scales), generator=generator) * scales + 5
    targets = features @ torch.randn(len(scales), generator=generator)
    return Table(features, targets + torch.randn(n_rows, generator=generator))


def classification_table() -> Table:
    """long_spec's 2000 rows in three classes."""
    spec = resolve_spec(RunRequest.model_validate(long_spec()))
    return materialize(spec.dataset, spec.task)


def trainer_on(table: Table, body: dict[str, Any]) -> Trainer:
    task = "classification" if table.classes is not None else "regression"
    spec = resolve_spec(RunRequest.model_validate(body), dataset_task=task)
    return Trainer(spec=spec, table=table, device=torch.device("cpu"))


def sub_table(table: Table, rows: torch.Tensor) -> Table:
    """The rows copied out, as the trainer did before it indexed the table."""
    return Table(table.features[rows].clone(), table.targets[rows].clone(), classes=table.classes)


# Tables of at most 65,536 training rows when standardizing: larger subsets' statistics
# stream in float64, which a whole copied table's float32 reductions do not reproduce bit
# for bit (test_streamed_statistics_are_those_of_the_rows covers them).
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "stratified-mlp-adam": (
        classification_table,
        {**long_spec(epochs=2), "dataset": STORED, "standardize": True},
    ),
    "standardized-target-adam": (
        lambda: scaled_table(1000),
        {**D2L_SPEC, "dataset": STORED, "standardize": True, "optimizer": {"type": "adam"}},
    ),
    "lbfgs": (
        lambda: scaled_table(1000),
        {"dataset": STORED, "optimizer": {"type": "lbfgs"}, "standardize": True, "epochs": 2},
    ),
    "closed-form": (
        lambda: scaled_table(1000),
        {"dataset": STORED, "optimizer": {"type": "closed_form"}, "standardize": True},
    ),
    "chunks-adam": (
        lambda: scaled_table(200_000),
        {"dataset": STORED, "optimizer": {"type": "adam"}, "batch_size": 4096, "epochs": 2},
    ),
    "chunks-lbfgs": (
        lambda: scaled_table(200_000),
        {"dataset": STORED, "optimizer": {"type": "lbfgs", "max_iter": 3}, "epochs": 1},
    ),
    "chunks-closed-form": (
        lambda: scaled_table(200_000),
        {"dataset": STORED, "optimizer": {"type": "closed_form"}, "epochs": 1},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_indexed_rows_train_exactly_as_a_copy_of_them_would(case: str):
    make_table, body = CASES[case]
    table = make_table()
    body = {**body, "validation_split": 0.2, "seed": 3}
    split = split_rows(table, fraction=0.2, seed=3)

    # One at a time: dropout draws from the global generator each trainer seeds.
    indexed = trainer_on(table, body)
    indexed_hooks = Recorder()
    assert indexed.run(indexed_hooks).status == "completed"
    copied = trainer_on(sub_table(table, split.train), {**body, "validation_split": 0})
    copied_hooks = Recorder()
    assert copied.run(copied_hooks).status == "completed"

    assert len(indexed_hooks.reports) == len(copied_hooks.reports) == indexed.spec.epochs
    for mine, theirs in zip(indexed_hooks.reports, copied_hooks.reports, strict=True):
        assert mine.train_loss == theirs.train_loss
        assert {k: v for k, v in mine.metrics.items() if not k.startswith("val_")} == theirs.metrics
    weights = copied.module.state_dict()
    for name, tensor in indexed.module.state_dict().items():
        assert torch.equal(tensor, weights[name]), name

    validation = sub_table(table, split.validation)
    indexed.module.eval()
    with torch.no_grad():
        val_loss = indexed.loss_fn(indexed.module(validation.features), validation.targets)
    assert indexed_hooks.reports[-1].val_loss == float(val_loss)


def test_resume_with_a_validation_split_is_bit_identical():
    body = {**long_spec(epochs=2), "dataset": STORED, "validation_split": 0.2, "standardize": True}
    uninterrupted = trainer_on(classification_table(), body)
    uninterrupted.run(Recorder())
    interrupted = trainer_on(classification_table(), body)
    assert interrupted.run(Recorder(stop_after_batches=130)).status == "interrupted"
    checkpoint = interrupted.checkpoint()
    torch.manual_seed(12345)  # a fresh process would not share the global RNG state
    resumed = trainer_on(classification_table(), body)
    resumed.restore(checkpoint)
    assert resumed.run(Recorder()).status == "completed"
    for name, tensor in uninterrupted.module.state_dict().items():
        assert torch.equal(tensor, resumed.module.state_dict()[name]), name


def test_the_trainer_indexes_the_tables_own_features():
    table = scaled_table(1000)
    trainer = trainer_on(table, {"dataset": STORED, "validation_split": 0.2})
    assert trainer.train_x.index is not None and trainer.val_x.index is not None
    assert len(trainer.train_x) == 800 and len(trainer.val_x) == 200
    for part in (trainer.train_x, trainer.val_x):
        assert part.matrix.data_ptr() == table.features.data_ptr()


def test_every_row_training_uses_no_index():
    table = scaled_table(1000)
    trainer = trainer_on(table, {"dataset": STORED, "validation_split": 0})
    assert trainer.train_x.index is None
    assert trainer.train_x.matrix is table.features
    assert len(trainer.val_x) == 0 and len(trainer.val_y) == 0


@pytest.mark.parametrize(
    "table", [scaled_table(1001), classification_table()], ids=["regression", "classes"]
)
def test_split_rows_are_sorted_and_partition_the_table(table: Table):
    split = split_rows(table, fraction=0.25, seed=5)
    for rows in (split.train, split.validation):
        assert rows.dtype == torch.int64 and bool((rows[1:] > rows[:-1]).all())
    everything = torch.cat([split.train, split.validation]).sort().values
    assert torch.equal(everything, torch.arange(len(table.targets)))
    assert len(split.validation) in (250, 251, 500)


def test_streamed_statistics_are_those_of_the_rows():
    table = scaled_table(5000)
    features = torch.cat([table.features, torch.full((5000, 1), 0.1)], dim=1)
    rows = split_rows(table, fraction=0.3, seed=1).train
    mean, std = feature_statistics(features, rows, chunk_rows=1000)
    exact = features[rows].double()
    assert torch.allclose(mean.double(), exact.mean(dim=0), rtol=1e-7, atol=0)
    assert torch.allclose(std[:-1].double(), exact[:, :-1].std(dim=0, unbiased=False), rtol=1e-6)
    # A constant column: its own value as the mean, and a std of exactly 1.
    assert mean[-1] == features[0, -1] and std[-1] == 1.0


def test_small_subsets_have_the_statistics_of_their_copy():
    table = scaled_table(5000)
    rows = split_rows(table, fraction=0.3, seed=1).train
    for mine, theirs in zip(
        feature_statistics(table.features, rows),
        feature_statistics(table.features[rows]),
        strict=True,
    ):
        assert torch.equal(mine, theirs)


PEAK_SCRIPT = """
import torch
from app.training.data import Table
from app.training.engine import Trainer, Uninterrupted, warm_up
from app.training.spec import RunRequest, resolve_spec

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

def peak_growth(work):
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # restart VmHWM from the current RSS
    before = kib("VmRSS")
    work()
    return kib("VmHWM") - before

generator = torch.Generator().manual_seed(0)
features = torch.randn(ROWS, 50, generator=generator)
table = Table(features, features[:, 0] * 2 + 1)
body = {"dataset": {"type": "dataset", "id": 1, "target": "y"}, "optimizer": {"type": "adam"},
        "batch_size": 4096, "epochs": 1, "validation_split": 0.2, "standardize": True}
spec = resolve_spec(RunRequest.model_validate(body), dataset_task="regression")
train = lambda: Trainer(spec=spec, table=table, device=torch.device("cpu")).run(Uninterrupted())
copy = lambda: features[torch.randperm(ROWS)].sum()
warm_up(torch.device("cpu"))  # torch's lazy imports, as a worker does before its first run
print(peak_growth(train) * 1024 / features.nbytes, peak_growth(copy) * 1024 / features.nbytes)
"""


def test_training_with_a_validation_split_allocates_no_copy_of_the_features():
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT.replace("ROWS", "2_000_000")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    training, copying = map(float, result.stdout.split())
    # The measure sees a copy of the matrix, as it would a trainer copying its two parts.
    # Without one, what grows is row indices, targets and a few chunks' buffers.
    assert copying > 0.9
    assert training < 0.5
