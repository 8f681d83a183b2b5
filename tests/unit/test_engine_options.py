"""The spec's `compile`, `precision` and `resources` options, and what the trainer makes of them."""

from typing import Any

import pytest
import torch

from app.errors import InvalidInputError
from app.training.engine import Trainer, estimation_error
from app.training.spec import RunRequest, resolve_spec
from tests.helpers import D2L_SPEC
from tests.unit.test_engine import Recorder, trainer_for

# Every batch the same size, so that compiling makes one graph, not a second for the last.
SMALL_MLP: dict[str, Any] = {
    **D2L_SPEC,
    "dataset": {**D2L_SPEC["dataset"], "n_samples": 240},
    "model": {"type": "mlp", "hidden": [8]},
    "optimizer": {"type": "adam", "lr": 0.01},
    "standardize": True,
    "epochs": 2,
    "batch_size": 16,
}


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainer.module.state_dict()


def test_options_default_to_eager_fp32_in_one_process():
    spec = resolve_spec(RunRequest.model_validate(D2L_SPEC))
    assert (spec.compile, spec.precision, spec.resources.workers) == (False, "fp32", 1)


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"optimizer": {"type": "lbfgs"}}, ("resources", "workers"), "one process"),
        ({"optimizer": {"type": "closed_form"}, "epochs": 1}, ("resources", "workers"), "one"),
    ],
)
def test_full_batch_optimizers_train_in_one_process(change: dict, loc: tuple, message: str):
    body = D2L_SPEC | change | {"resources": {"workers": 2}}
    with pytest.raises(InvalidInputError, match=message) as refused:
        resolve_spec(RunRequest.model_validate(body))
    assert refused.value.loc == ("body", *loc)


@pytest.mark.parametrize(
    ("change", "loc"),
    [({"compile": True}, ("compile",)), ({"precision": "bf16"}, ("precision",))],
)
def test_closed_form_takes_neither_compile_nor_bf16(change: dict, loc: tuple):
    body = D2L_SPEC | {"optimizer": {"type": "closed_form"}, "epochs": 1} | change
    with pytest.raises(InvalidInputError) as refused:
        resolve_spec(RunRequest.model_validate(body))
    assert refused.value.loc == ("body", *loc)


def test_bf16_trains_under_autocast_and_keeps_float32_weights():
    fp32 = trainer_for(D2L_SPEC)
    fp32.run(Recorder())
    bf16 = trainer_for(D2L_SPEC | {"precision": "bf16"})
    hooks = Recorder()
    assert bf16.run(hooks).status == "completed"
    # bfloat16 keeps 8 bits of mantissa: the steps differ, the fit is still d2l's.
    assert not torch.equal(weights(bf16)["net.0.weight"], weights(fp32)["net.0.weight"])
    assert all(tensor.dtype == torch.float32 for tensor in weights(bf16).values())
    error = estimation_error(bf16)
    assert error is not None
    assert max(abs(value) for value in error["w"]) < 0.05
    assert abs(error["b"]) < 0.05
    assert hooks.reports[-1].train_loss < 1e-3


def test_bf16_resumes_bit_identically_from_a_mid_epoch_checkpoint():
    body = SMALL_MLP | {"precision": "bf16"}
    straight = trainer_for(body)
    straight.run(Recorder())
    interrupted = trainer_for(body)
    assert interrupted.run(Recorder(stop_after_batches=20)).status == "interrupted"
    resumed = trainer_for(body)
    resumed.restore(interrupted.checkpoint())
    assert resumed.run(Recorder()).status == "completed"
    for name, tensor in weights(straight).items():
        assert torch.equal(tensor, weights(resumed)[name]), name


def test_compile_trains_as_eager_does_and_keeps_the_plain_module():
    eager = trainer_for(SMALL_MLP)
    eager_hooks = Recorder()
    eager.run(eager_hooks)
    compiled = trainer_for(SMALL_MLP | {"compile": True})
    interrupted = compiled.run(Recorder(stop_after_batches=20))
    assert interrupted.status == "interrupted"
    checkpoint = compiled.checkpoint()
    # Weights and checkpoints are the module's own: no `_orig_mod.` from the compiled wrapper.
    assert list(compiled.module.state_dict()) == list(eager.module.state_dict())
    resumed = trainer_for(SMALL_MLP | {"compile": True})
    resumed.restore(checkpoint)
    hooks = Recorder()
    assert resumed.run(hooks).status == "completed"
    # Fused kernels may round differently from eager ones, never by more than that.
    for name, tensor in weights(eager).items():
        torch.testing.assert_close(weights(resumed)[name], tensor, rtol=1e-4, atol=1e-5)
    assert hooks.reports[-1].train_loss == pytest.approx(
        eager_hooks.reports[-1].train_loss, rel=1e-3
    )
