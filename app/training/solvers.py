"""Fits that are not a torch.optim step: the direct least-squares solve of a linear model,
and the map from a linear model's weights back to the original units of its data."""

import itertools

import torch
from torch import nn

from app.training.data import RowSubset
from app.training.evaluation import EVAL_CHUNK_ROWS
from app.training.modules import TabularNet

# Below this ratio of smallest to largest pivot (squared) the normal equations are taken as
# singular: with float32 data the smaller directions are rounding noise, not signal.
SINGULAR_RATIO = 1e-10


@torch.no_grad()
def solve_least_squares(
    module: TabularNet, rows: RowSubset, targets: torch.Tensor, *, l2: float
) -> None:
    """Set a linear module's layer to the (ridge) least-squares fit of `targets` on `rows`.

    The normal equations of [x, y] are accumulated over row chunks (memory O(d^2)),
    centred, scaled to unit diagonal and solved by Cholesky; the bias is the unpenalised
    intercept. The fit is of the raw features and mapped onto the module's standardization
    afterwards; l2 penalises the weights the module holds (standardized ones, if so).
    """
    float64, device = torch.float64, targets.device
    n_rows, n_features = len(rows), rows.matrix.shape[1]
    chunks = rows.chunks(EVAL_CHUNK_ROWS)
    # Rows are shifted by the first chunk's means before the products, so that a large
    # mean does not cancel catastrophically when the sums are centred.
    head_x, head_y = next(chunks), targets[:EVAL_CHUNK_ROWS]
    shift_x, shift_y = head_x.mean(dim=0).to(float64), head_y.mean().to(float64)
    # One product of [x - shift, y - shift, 1] per chunk gives every sum the solve needs:
    # the cross products, the column sums (last row) and the count.
    width = n_features + 2
    buffer = torch.empty((min(n_rows, EVAL_CHUNK_ROWS), width), dtype=float64, device=device)
    buffer[:, -1] = 1.0
    gram = torch.zeros((width, width), dtype=float64, device=device)
    for x, y in zip(
        itertools.chain([head_x], chunks),
        torch.split(targets, EVAL_CHUNK_ROWS),
        strict=True,
    ):
        block = buffer[: x.shape[0]]
        torch.sub(x, shift_x, out=block[:, :n_features])
        torch.sub(y, shift_y, out=block[:, n_features])
        gram.addmm_(block.T, block)
    mean = gram[-1, :-1] / n_rows
    gram = gram[:-1, :-1] - n_rows * torch.outer(mean, mean)
    mean += torch.cat([shift_x, shift_y.unsqueeze(0)])
    xx, xy = gram[:n_features, :n_features], gram[:n_features, n_features]
    penalty = torch.full((n_features,), l2, dtype=float64, device=device)
    if module.standardize:
        penalty *= module.input_std.to(float64) ** 2
    scale = xx.diagonal().sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    system = xx / torch.outer(scale, scale)
    system.diagonal().add_(penalty / scale**2)
    rhs = xy / scale
    factor, info = torch.linalg.cholesky_ex(system)
    pivots = factor.diagonal() ** 2
    if int(info) == 0 and pivots.min() > SINGULAR_RATIO * pivots.max():
        solution = torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
    else:
        # Collinear features: the minimum-norm solution of the scaled system.
        solution = torch.linalg.pinv(system, rtol=SINGULAR_RATIO, hermitian=True) @ rhs
    weight = solution / scale
    bias = mean[n_features] - mean[:n_features] @ weight
    if module.standardize:
        bias = bias + module.input_mean.to(float64) @ weight
        weight = weight * module.input_std.to(float64)
    if module.standardize_target:
        std = module.target_std.to(float64)
        weight, bias = weight / std, (bias - module.target_mean.to(float64)) / std
    layer = module.net[0]
    assert isinstance(layer, nn.Linear)
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    layer.bias.copy_(bias.reshape(layer.bias.shape))


def linear_coefficients(module: TabularNet) -> tuple[torch.Tensor, float]:
    """A linear regression's weights and bias on the original features and targets, in float64."""
    layer = module.net[0]
    assert isinstance(layer, nn.Linear)
    w = layer.weight.detach().to("cpu", torch.float64).reshape(-1)
    b = float(layer.bias.detach().to("cpu", torch.float64).item())
    if module.standardize_target:
        std = float(module.target_std.to("cpu", torch.float64).item())
        w, b = w * std, b * std + float(module.target_mean.to("cpu", torch.float64).item())
    if module.standardize:
        w = w / module.input_std.to("cpu", torch.float64)
        b = b - float((w * module.input_mean.to("cpu", torch.float64)).sum())
    return w, b
