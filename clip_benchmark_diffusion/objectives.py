"""The scoring math shared by every family: timestep draws, objectives, weightings and losses.

Parameterisation (what a network output means, how x_t is made) belongs to the family's noise
schedule (`schedules.py`); this module only combines a schedule's estimates of eps, x0 and the
flow velocity into the weighted error of an objective, and seeds the draws.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F

from .devices import to_device
from .settings import ScorerSettings

if TYPE_CHECKING:
    from .schedules import NoiseSchedule

PREDICTION_TYPES = ("epsilon", "v_prediction")


def van_der_corput(indices: torch.Tensor) -> torch.Tensor:
    """Base-2 radical inverse: any power-of-two prefix of 0, 1, 2, ... is evenly spread over
    [0, 1), and extending the prefix fills the gaps. That gives stratified timesteps whose
    earlier draws stay valid when more are added (adaptive strategies reuse them)."""
    result = torch.zeros(indices.shape, dtype=torch.float64)
    remaining = indices.to(torch.int64).clone()
    scale = 0.5
    while bool((remaining > 0).any()):
        result += (remaining & 1).to(torch.float64) * scale
        remaining >>= 1
        scale *= 0.5
    return result


def timestep_range(settings: ScorerSettings, num_train_timesteps: int) -> tuple[int, int]:
    t_max = num_train_timesteps - 1 if settings.t_max is None else settings.t_max
    if t_max >= num_train_timesteps:
        raise ValueError(f"t_max={t_max} is outside the model's {num_train_timesteps} training timesteps")
    return settings.t_min, t_max


def draw_timesteps(settings: ScorerSettings, num_train_timesteps: int, draw_indices: torch.Tensor,
                   image_seed: int) -> torch.Tensor:
    """Integer timesteps for the given draw indices of one image.

    Stratified grids get a per-image random shift (from `image_seed`), so they differ
    between images while staying evenly spaced within each image.
    """
    t_min, t_max = timestep_range(settings, num_train_timesteps)
    span = t_max - t_min + 1
    if settings.timesteps == "stratified":
        offset = unit_float(mix_seed(image_seed, 0x5EED))
        u = torch.remainder(van_der_corput(draw_indices) + offset, 1.0)
    else:  # uniform: one hash-derived uniform number per draw
        u = torch.tensor([unit_float(mix_seed(image_seed, int(i), 0x7157)) for i in draw_indices],
                         dtype=torch.float64)
    return (t_min + torch.floor(u * span)).clamp(t_min, t_max).to(torch.int64)


def unit_float(bits: int) -> float:
    """Map a 63-bit integer to [0, 1)."""
    return (bits >> 10) / float(1 << 53)


def objective_weight(settings: ScorerSettings, schedule: "NoiseSchedule", timesteps: torch.Tensor) -> torch.Tensor:
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
                   x0: Optional[torch.Tensor], schedule: "NoiseSchedule", timesteps: torch.Tensor,
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


# ---------------------------------------------------------------- the DDPM-table signatures of 0.1
def predicted_epsilon_and_x0(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                             prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(epsilon_hat, x0_hat) of a DDPM model output, given each row's alpha_bar (kept for callers
    of the first API; the math lives in `schedules.DiscreteSchedule`)."""
    from .schedules import DiscreteSchedule

    eps_hat, x0_hat, _ = DiscreteSchedule(alpha_bar, prediction_type).estimates(
        model_output, x_t, torch.arange(len(alpha_bar), device=x_t.device))
    return eps_hat, x0_hat


def timestep_weight(settings: ScorerSettings, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                    num_train_timesteps: int) -> torch.Tensor:
    """w(t) of the objective on a DDPM table (see `objective_weight`)."""
    from .schedules import DiscreteSchedule

    return objective_weight(settings, DiscreteSchedule(alphas_cumprod[:num_train_timesteps], "epsilon"), timesteps)


def denoising_error(settings: ScorerSettings, model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                    x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                    prediction_type: str, num_train_timesteps: int) -> torch.Tensor:
    """Weighted per-draw error, float32, of DDPM model outputs (see `NoiseSchedule.errors`)."""
    from .schedules import DiscreteSchedule

    schedule = DiscreteSchedule(alphas_cumprod[:num_train_timesteps], prediction_type)
    return schedule.errors(settings, model_output, x0, noise, x_t, timesteps)


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit mix of integers (splitmix64-style), stable across processes."""
    state = 0x243F6A8885A308D3
    for part in parts:
        state = (state ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        state = z ^ (z >> 31)
    return state & 0x7FFFFFFFFFFFFFFF


def draw_noise(image_seed: int, draw_index: int, shape: tuple, device: torch.device | str = "cpu",
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gaussian noise of one draw, seeded by (image seed, draw index) alone: independent of batch
    size, class order, worker count and of how many draws are requested at once. `out` (a
    contiguous float32 CPU tensor of `shape`, e.g. a row of a pass's noise table) receives the
    same values without a copy."""
    generator = torch.Generator().manual_seed(mix_seed(image_seed, draw_index))
    if out is not None:
        return torch.randn(shape, generator=generator, out=out)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


__all__ = [
    "van_der_corput", "draw_timesteps", "objective_weight", "estimate_of", "weighted_error", "predicted_epsilon_and_x0",
    "timestep_weight", "elementwise_loss", "denoising_error", "mix_seed", "unit_float", "draw_noise",
]
