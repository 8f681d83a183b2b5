"""The run spec: defaults, inference and refusals, without a server."""

import pytest
from pydantic import ValidationError

from app.config import Limits
from app.errors import InvalidInputError
from app.runs.service import SpecLimitError, check_limits, dataset_shape
from app.training.spec import RunRequest, RunSpec, resolve_spec
from tests.helpers import D2L_SPEC


def resolved(body: dict, dataset_task: str | None = None) -> RunSpec:
    return resolve_spec(RunRequest.model_validate(body), dataset_task=dataset_task)


def test_task_and_loss_are_inferred():
    assert resolved(D2L_SPEC | {"loss": None}).loss == "mse"
    classification = resolved({"dataset": {"type": "synthetic_classification"}})
    assert (classification.task, classification.loss) == ("classification", "cross_entropy")
    inline = resolved(
        {
            "dataset": {"type": "inline", "features": [[1], [2]], "targets": ["a", "b"]},
            "loss": "cross_entropy",
        }
    )
    assert inline.task == "classification"


def test_a_stored_dataset_gives_its_task_unless_the_request_names_one():
    ref = {"dataset": {"type": "dataset", "id": 1, "target": "species"}}
    assert (resolved(ref, "classification").task, resolved(ref, "classification").loss) == (
        "classification",
        "cross_entropy",
    )
    assert resolved(ref | {"loss": "huber"}, "classification").task == "regression"
    assert resolved(ref | {"task": "regression"}, "classification").loss == "mse"


def test_the_resolved_spec_requires_task_and_loss():
    with pytest.raises(ValidationError, match="task"):
        RunSpec.model_validate({"dataset": {"type": "synthetic_linear"}, "loss": "mse"})
    assert "chaos" not in RunRequest.model_json_schema()["properties"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": {"type": "sgd", "lr": 0}}, "greater than 0"),
        ({"optimizer": {"type": "rmsprop"}}, "does not match any of the expected tags"),
        ({"model": {"type": "mlp", "dropout": 1.0}}, "less than 1"),
        ({"task": "classification", "loss": "mse"}, "does not fit task"),
        ({"validation_split": 1.0}, "less than 1"),
        ({"optimizer": {"type": "sgd", "nesterov": True}}, "nesterov needs a momentum"),
        ({"dataset": {"type": "synthetic_linear", "true_w": []}}, "at least 1 item"),
    ],
)
def test_invalid_specs_are_refused(change: dict, message: str):
    with pytest.raises((ValidationError, InvalidInputError), match=message):
        resolved(D2L_SPEC | change)


def test_integer_labels_stay_integers():
    spec = resolved(
        {
            "dataset": {"type": "inline", "features": [[1], [2], [3]], "targets": [1, 2.5, "x"]},
            "task": "classification",
        }
    )
    assert [type(label) for label in spec.dataset.targets] == [int, float, str]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"epochs": 11}, ("epochs",)),
        ({"batch_size": 65}, ("batch_size",)),
        ({"dataset": {"type": "synthetic_linear", "n_samples": 1001}}, ("dataset", "n_samples")),
        ({"model": {"type": "mlp", "hidden": [8, 65]}}, ("model", "hidden", 1)),
        ({"model": {"type": "mlp", "hidden": [64, 64, 64]}}, ("model", "hidden")),
        ({"model": {"type": "mlp", "hidden": [64, 64]}}, ("model",)),
    ],
)
def test_limits_name_the_field(change: dict, loc: tuple):
    limits = Limits(
        max_epochs=10,
        max_batch_size=64,
        max_rows=1000,
        max_hidden_width=64,
        max_hidden_layers=2,
        max_parameters=1000,
    )
    spec = resolved(D2L_SPEC | change)
    with pytest.raises(SpecLimitError) as refused:
        check_limits(spec=spec, limits=limits, shape=dataset_shape(spec))
    assert refused.value.loc == ("body", *loc)
    assert refused.value.status == 422


CLASSES = {"dataset": {"type": "synthetic_classification"}}
ONE_PASS = {key: value for key, value in D2L_SPEC.items() if key != "epochs"}


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            D2L_SPEC | {"optimizer": {"type": "closed_form"}, "model": {"type": "mlp"}},
            ("optimizer",),
            "linear model",
        ),
        (D2L_SPEC | {"optimizer": {"type": "closed_form"}, "loss": "huber"}, ("optimizer",), "mse"),
        (CLASSES | {"optimizer": {"type": "closed_form"}}, ("optimizer",), "regression"),
        (
            ONE_PASS | {"optimizer": {"type": "closed_form"}, "scheduler": {"type": "cosine"}},
            ("scheduler",),
            "no scheduler",
        ),
        (
            ONE_PASS | {"optimizer": {"type": "closed_form"}, "early_stopping": {}},
            ("early_stopping",),
            "no early_stopping",
        ),
        (D2L_SPEC | {"optimizer": {"type": "closed_form"}}, ("epochs",), "epochs must be 1"),
        (D2L_SPEC | {"early_stopping": {}}, ("early_stopping", "metric"), "validation_split"),
        (
            D2L_SPEC | {"scheduler": {"type": "plateau", "metric": "val_r2"}},
            ("scheduler", "metric"),
            "validation_split",
        ),
        (
            D2L_SPEC | {"early_stopping": {"metric": "train_accuracy"}},
            ("early_stopping", "metric"),
            "regression has no metric",
        ),
        (
            CLASSES | {"early_stopping": {"metric": "train_rmse"}},
            ("early_stopping", "metric"),
            "classification has no metric",
        ),
        (
            D2L_SPEC | {"optimizer": {"type": "lbfgs"}, "grad_clip_norm": 1.0},
            ("grad_clip_norm",),
            "lbfgs",
        ),
        (CLASSES | {"standardize_target": True}, ("standardize_target",), "regression"),
    ],
)
def test_training_options_that_do_not_fit_name_the_field(body: dict, loc: tuple, message: str):
    with pytest.raises(InvalidInputError, match=message) as refused:
        resolved(body)
    assert refused.value.loc == ("body", *loc)
    assert refused.value.status == 422


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"early_stopping": {"metric": "lr"}}, "should match pattern"),
        ({"early_stopping": {"patience": 0}}, "greater than or equal to 1"),
        ({"early_stopping": {"min_delta": -1}}, "greater than or equal to 0"),
        ({"scheduler": {"type": "step"}}, "step_size"),
        ({"scheduler": {"type": "onecycle", "max_lr": 0.1, "pct_start": 1}}, "less than 1"),
        ({"scheduler": {"type": "cosine", "T_max": 3}}, "Extra inputs are not permitted"),
        ({"grad_clip_norm": 0}, "greater than 0"),
        ({"optimizer": {"type": "closed_form", "l2": -1}}, "greater than or equal to 0"),
        ({"optimizer": {"type": "lbfgs", "line_search": "armijo"}}, "strong_wolfe"),
    ],
)
def test_training_options_are_checked_alone(change: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        RunRequest.model_validate(D2L_SPEC | change)


def test_closed_form_defaults_to_one_epoch_and_the_options_fit_when_valid():
    assert resolved(ONE_PASS | {"optimizer": {"type": "closed_form"}}).epochs == 1
    spec = resolved(
        D2L_SPEC
        | {
            "validation_split": 0.2,
            "early_stopping": {"metric": "val_r2"},
            "scheduler": {"type": "plateau", "metric": "train_loss"},
            "grad_clip_norm": 1.0,
        }
    )
    assert spec.early_stopping is not None and spec.early_stopping.patience == 5
    assert spec.scales_target is False
    assert resolved(D2L_SPEC | {"standardize": True}).standardize_target is True
    assert not resolved(D2L_SPEC | {"standardize": True, "standardize_target": False}).scales_target
    assert resolved(CLASSES | {"standardize": True}).standardize_target is False
    # A spec stored before standardize_target existed keeps training on raw targets.
    stored = D2L_SPEC | {"standardize": True, "task": "regression", "loss": "mse"}
    assert RunSpec.model_validate(stored).scales_target is False
