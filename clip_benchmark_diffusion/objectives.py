"""The scoring math shared by every family: objectives, weightings and losses.

Parameterisation (what a network output means, how x_t is made) belongs to the family's noise
schedule (`schedules.py`, below this module: it never imports it); this module combines a
schedule's estimates of eps, x0 and the flow velocity into the weighted error of an objective
(`schedule_errors`). The draws (seeds, timesteps, noise) live in `draws.py`; their names are
re-exported here for the callers of 0.1.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .devices import to_device
from .draws import (draw_noise, draw_timesteps, mix_seed, timestep_range, unit_float,  # noqa: F401 (re-exported)
                    van_der_corput)
from .schedules import PREDICTION_TYPES, NoiseSchedule  # noqa: F401 (PREDICTION_TYPES: re-exported)
from .settings import ScorerSettings


def objective_weight(settings: ScorerSettings, schedule: NoiseSchedule, timesteps: torch.Tensor) -> torch.Tensor:
    """w of the chosen objective for each timestep index, float32.

    Defined through the schedule's SNR and its unit-time axis, so an objective means the same on
    a discrete DDPM model and on a flow-matching one: "x0_snr" weighs the x0 error by SNR (which
    equals the epsilon error), "x0_heuristic" by exp(-rate * u) and "x0_buckets" by the bucket of u,
    where u is t / T (DDPM) or sigma (flow); "epsilon" and "velocity" are unweighted.
    """
    if settings.objective in ("epsilon", "velocity"):
        weight = torch.ones(timesteps.shape, dtype=torch.float64)
    elif settings.objective == "x0_snr":
        weight = schedule.snr(timesteps)
    elif settings.objective == "x0_heuristic":
        weight = torch.exp(-settings.heuristic_rate * schedule.unit_time(timesteps))
    elif settings.objective == "x0_buckets":
        buckets = torch.tensor(settings.bucket_weights, dtype=torch.float64)
        weight = buckets[schedule.bucket(timesteps, len(buckets))]
    else:
        raise ValueError(f"unknown objective {settings.objective!r}")
    return weight.to(torch.float32)


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss: str,
                     out: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample loss averaged over all non-batch elements. `out` (float32, `prediction`'s shape;
    it may be `prediction` itself) takes the elementwise values of l2 and l1 in place of a new
    multi-megabyte tensor per call. `rows` (optional, CPU, non-decreasing) says which row of
    `target` each prediction row is compared with: a draw's noise serves all the rows that share
    it without being copied to each. The values are the same bits every way."""
    if rows is not None and (out is None or loss not in ("l2", "l1")):
        target, rows = target.index_select(0, to_device(rows, target.device)), None
    if loss not in ("l2", "l1", "huber"):
        raise ValueError(f"unknown loss {loss!r}")
    if loss == "huber":
        values = F.huber_loss(prediction, target, reduction="none", delta=1.0)
    elif out is None:  # l2 as one fused pass: the same bits as (prediction - target).pow(2)
        values = F.mse_loss(prediction, target, reduction="none") if loss == "l2" else (prediction - target).abs()
    else:
        _subtract(prediction, target, out, rows)
        values = out.square_() if loss == "l2" else out.abs_()
    return values.flatten(1).mean(dim=1)


def _subtract(prediction: torch.Tensor, target: torch.Tensor, out: torch.Tensor, rows: Optional[torch.Tensor]) -> None:
    """out = prediction - target[rows], one broadcast subtraction per run of rows sharing a target row."""
    if rows is None:
        torch.sub(prediction, target, out=out)
        return
    runs, counts = torch.unique_consecutive(rows, return_counts=True)
    start = 0
    for run, count in zip(runs.tolist(), counts.tolist()):
        torch.sub(prediction[start:start + count], target[run:run + 1], out=out[start:start + count])
        start += count


#: which of a schedule's estimates ("epsilon", "x0" or "velocity") each objective compares
ESTIMATE_OF = {"epsilon": "epsilon", "velocity": "velocity"}


def estimate_of(objective: str) -> str:
    """The estimate an objective compares: "epsilon", "velocity", or "x0" (the x0 objectives)."""
    return ESTIMATE_OF.get(objective, "x0")


def weighted_error(settings: ScorerSettings, estimate: Callable[[str], torch.Tensor], noise: torch.Tensor,
                   x0: Optional[torch.Tensor], schedule: NoiseSchedule, timesteps: torch.Tensor,
                   scratch: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-row weighted error of the objective, from a schedule's `estimate(kind)` of "epsilon",
    "x0" or "velocity" (only the one the objective needs is computed: the others cost several
    passes over every row). "epsilon" compares eps_hat with the noise, "velocity" v_hat with
    eps - x0 (the flow target, Self-Bench's score), the x0 objectives x0_hat with x0; `x0` may be
    None for "epsilon", which never reads it. `scratch` and `rows` are `elementwise_loss`'s `out` and
    `rows` (with `rows`, `noise` and `x0` hold one row per draw, the estimates one per row).
    """
    kind = estimate_of(settings.objective)
    target = noise if kind == "epsilon" else noise - x0 if kind == "velocity" else x0
    error = elementwise_loss(estimate(kind), target, settings.loss, scratch, rows)
    return error * to_device(objective_weight(settings, schedule, timesteps), error.device)


def schedule_errors(schedule: NoiseSchedule, settings: ScorerSettings, model_output: torch.Tensor,
                    x0: Optional[torch.Tensor], noise: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor,
                    scratch: Optional[torch.Tensor] = None, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted per-row error of the settings' objective under `schedule`'s noise process, float32
    (`x0` may be None when the objective compares epsilon: see `estimate_of`). `scratch` (optional,
    float32, the output's shape, overwritten) holds the float32 output and the loss's elementwise
    values instead of two new tensors per call: a caller scoring pass after pass reuses one. With
    `rows` (CPU, non-decreasing), `x0`, `noise` and `x_t` hold one row per draw and output row i
    belongs to draw `rows[i]` (`timesteps` and the output have one row per row); x_t rows are
    gathered only for an estimate that needs them."""
    if rows is not None and not schedule.is_output(estimate_of(settings.objective)):
        x_t = x_t.index_select(0, to_device(rows, x_t.device))
    if scratch is not None and model_output.dtype != torch.float32:
        model_output = scratch.copy_(model_output)
    model_output, x0, noise, x_t = (None if v is None else v.to(torch.float32)
                                    for v in (model_output, x0, noise, x_t))
    return weighted_error(settings, lambda kind: schedule.estimate(kind, model_output, x_t, timesteps), noise, x0,
                          schedule, timesteps.cpu(), scratch, rows)


__all__ = [
    "objective_weight", "estimate_of", "weighted_error", "schedule_errors", "elementwise_loss",
    # re-exported from draws.py
    "van_der_corput", "draw_timesteps", "mix_seed", "unit_float", "draw_noise",
]
