"""The denoising-error math in one place: timesteps, error spaces, weightings and losses.

Everything here is pure tensor arithmetic on a noise schedule (`alphas_cumprod`), so it is
shared by every backend and testable without a model. Noising itself is done by the
backend's diffusers scheduler (`add_noise`); this module only turns a model output into a
weighted error against the draw that produced it.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from .settings import ScorerSettings

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


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def predicted_epsilon_and_x0(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor,
                             prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a raw model output into (epsilon_hat, x0_hat) for its parameterisation."""
    a = _broadcast(alpha_bar.sqrt(), x_t)
    s = _broadcast((1 - alpha_bar).sqrt(), x_t)
    if prediction_type == "epsilon":
        eps_hat = model_output
        x0_hat = (x_t - s * eps_hat) / a
    elif prediction_type == "v_prediction":
        x0_hat = a * x_t - s * model_output
        eps_hat = s * x_t + a * model_output
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; supported: {PREDICTION_TYPES}")
    return eps_hat, x0_hat


def timestep_weight(settings: ScorerSettings, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                    num_train_timesteps: int) -> torch.Tensor:
    """w(t) of the chosen objective (1 for the unweighted epsilon objective)."""
    alpha_bar = alphas_cumprod[timesteps].to(torch.float64)
    if settings.objective == "epsilon":
        weight = torch.ones_like(alpha_bar)
    elif settings.objective == "x0_snr":
        weight = alpha_bar / (1 - alpha_bar)
    elif settings.objective == "x0_heuristic":
        weight = torch.exp(-settings.heuristic_rate * timesteps.to(torch.float64) / num_train_timesteps)
    elif settings.objective == "x0_buckets":
        buckets = torch.tensor(settings.bucket_weights, dtype=torch.float64)
        index = (timesteps.to(torch.int64) * len(buckets)) // num_train_timesteps
        weight = buckets[index.clamp(0, len(buckets) - 1)]
    else:
        raise ValueError(f"unknown objective {settings.objective!r}")
    return weight.to(torch.float32)


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample loss averaged over all non-batch elements."""
    if loss == "l2":
        values = (prediction - target).pow(2)
    elif loss == "l1":
        values = (prediction - target).abs()
    elif loss == "huber":
        values = F.huber_loss(prediction, target, reduction="none", delta=1.0)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return values.flatten(1).mean(dim=1)


def denoising_error(settings: ScorerSettings, model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                    x_t: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                    prediction_type: str, num_train_timesteps: int) -> torch.Tensor:
    """Weighted per-draw error, in float32, of a batch of model outputs."""
    model_output, x0, noise, x_t = (v.to(torch.float32) for v in (model_output, x0, noise, x_t))
    alpha_bar = alphas_cumprod.to(x_t.device)[timesteps.to(x_t.device)].to(torch.float32)
    eps_hat, x0_hat = predicted_epsilon_and_x0(model_output, x_t, alpha_bar, prediction_type)
    if settings.objective == "epsilon":
        error = elementwise_loss(eps_hat, noise, settings.loss)
    else:
        error = elementwise_loss(x0_hat, x0, settings.loss)
    weight = timestep_weight(settings, timesteps.cpu(), alphas_cumprod.cpu(), num_train_timesteps)
    return error * weight.to(error.device)


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


def draw_noise(image_seed: int, draw_index: int, shape: tuple, device: torch.device | str = "cpu"
               ) -> torch.Tensor:
    """Gaussian noise of one draw, seeded by (image seed, draw index) alone: independent of batch
    size, class order, worker count and of how many draws are requested at once."""
    generator = torch.Generator().manual_seed(mix_seed(image_seed, draw_index))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


__all__ = [
    "van_der_corput", "draw_timesteps", "predicted_epsilon_and_x0", "timestep_weight",
    "elementwise_loss", "denoising_error", "mix_seed", "unit_float", "draw_noise",
]
