"""Optuna's samplers and pruners, over trials that fitserve's database keeps.

No Optuna storage outlives a decision: each one rebuilds an in-memory study from the
sweep's trial rows (parameters, states, per-epoch objective values, and the attributes the
sampler and pruner keep on a trial), asks it, and hands back what to store. So a sweep
survives any process, and the sampler is seeded per trial number: the same sweep with the
same seed proposes the same trials whatever the timing.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from app.sweeps.schemas import Choice, FloatRange, IntRange, SpaceEntry, SweepRequest
from app.training.spec import metric_mode

optuna.logging.set_verbosity(optuna.logging.WARNING)

TrialOutcome = Literal["running", "complete", "pruned", "failed"]
_STATES = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}


@dataclass(frozen=True)
class TrialRecord:
    """What a decision needs of one trial."""

    number: int
    sampler_params: dict[str, Any]
    system_attrs: dict[str, Any]
    outcome: TrialOutcome
    value: float | None
    intermediate: Mapping[int, float]


@dataclass(frozen=True)
class Proposal:
    """A new trial's values for the run spec, and the same as Optuna keeps them."""

    params: dict[str, Any]
    sampler_params: dict[str, Any]
    system_attrs: dict[str, Any]


def choices(entry: SpaceEntry) -> list[Any] | None:
    """The values of a choice or a value list; None for a range."""
    if isinstance(entry, list):
        return entry
    if isinstance(entry, Choice):
        return entry.values
    return None


def distribution(entry: SpaceEntry) -> BaseDistribution:
    """Optuna's distribution for one entry of the space; choices are drawn by index."""
    values = choices(entry)
    if values is not None:
        # By index: Optuna's choices must be scalars, a spec value may be a list.
        return CategoricalDistribution(list(range(len(values))))
    if isinstance(entry, FloatRange):
        return FloatDistribution(entry.low, entry.high, log=entry.type == "loguniform")
    assert isinstance(entry, IntRange)
    return IntDistribution(entry.low, entry.high, step=entry.step, log=entry.log)


def direction(request: SweepRequest) -> Literal["minimize", "maximize"]:
    """The objective's direction, explicit or by its metric."""
    if request.objective.direction is not None:
        return request.objective.direction
    return "maximize" if metric_mode(request.objective.metric) == "max" else "minimize"


def grid_size(request: SweepRequest) -> int:
    """How many combinations the grid has (the grid strategy takes choices only)."""
    size = 1
    for entry in request.space.values():
        values = choices(entry)
        assert values is not None
        size *= len(values)
    return size


class Search:
    """The sweep's sampler and pruner, for a study rebuilt from its trials."""

    def __init__(self, request: SweepRequest) -> None:
        self.request = request
        self.distributions = {path: distribution(entry) for path, entry in request.space.items()}

    def propose(self, trials: Sequence[TrialRecord], number: int) -> Proposal:
        """The parameters of trial `number`, given the trials before it."""
        study = self._study(trials, seed_offset=number)
        trial = study.ask(fixed_distributions=self.distributions)
        sampler_params = dict(trial.params)
        params = {}
        for path, entry in self.request.space.items():
            values = choices(entry)
            value = sampler_params[path]
            params[path] = values[value] if values is not None else value
        frozen = study.get_trials(deepcopy=False)[-1]
        return Proposal(params, sampler_params, dict(frozen.system_attrs))

    def should_prune(
        self, trials: Sequence[TrialRecord], number: int
    ) -> tuple[bool, dict[str, Any]]:
        """Whether the pruner stops running trial `number` now, and its attributes after."""
        study = self._study(trials, seed_offset=number)
        position = [trial.number for trial in trials].index(number)
        decision = study.pruner.prune(study, study.get_trials(deepcopy=False)[position])
        # ASHA records the rungs a trial reached on it; the next decisions compare with them.
        return bool(decision), dict(study.get_trials(deepcopy=False)[position].system_attrs)

    def _study(self, trials: Sequence[TrialRecord], *, seed_offset: int) -> optuna.Study:
        study = optuna.create_study(
            direction=direction(self.request),
            sampler=self._sampler(seed_offset),
            pruner=self._pruner(),
        )
        for trial in trials:
            state = _STATES[trial.outcome]
            study.add_trial(
                create_trial(
                    state=state,
                    value=trial.value if state == TrialState.COMPLETE else None,
                    params=trial.sampler_params,
                    distributions=self.distributions,
                    system_attrs=trial.system_attrs,
                    intermediate_values=dict(trial.intermediate),
                )
            )
        return study

    def _sampler(self, seed_offset: int) -> optuna.samplers.BaseSampler:
        # One seed per trial number: a rebuilt sampler must not replay the first draw.
        seed = (self.request.seed * 1_000_003 + seed_offset) % 2**32
        match self.request.strategy.type:
            case "grid":
                space = {
                    path: list(range(len(choices(entry) or [])))
                    for path, entry in self.request.space.items()
                }
                # The grid's order is shuffled by the seed, and a trial's grid id indexes
                # that order: every rebuild must shuffle alike.
                return optuna.samplers.GridSampler(space, seed=self.request.seed)
            case "tpe":
                return optuna.samplers.TPESampler(seed=seed)
            case _:
                return optuna.samplers.RandomSampler(seed=seed)

    def _pruner(self) -> optuna.pruners.BasePruner:
        options = self.request.pruner
        match options.type:
            case "median":
                return optuna.pruners.MedianPruner(
                    n_startup_trials=options.min_trials, n_warmup_steps=options.warmup_epochs
                )
            case "asha":
                return optuna.pruners.SuccessiveHalvingPruner(
                    min_resource=options.min_resource, reduction_factor=options.reduction_factor
                )
            case _:
                return optuna.pruners.NopPruner()


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of a nested spec with the value at a dotted path replaced (or added)."""
    head, _, rest = path.partition(".")
    copy = dict(spec)
    if not rest:
        copy[head] = value
        return copy
    inner = copy.get(head)
    if not isinstance(inner, dict):
        raise KeyError(f"{head} is not an object in the run spec")
    copy[head] = set_path(inner, rest, value)
    return copy
