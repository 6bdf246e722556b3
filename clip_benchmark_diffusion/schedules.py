"""Noise processes: how a family noises a clean sample and what its network output means.

Two processes cover every supported family:

* `DiscreteSchedule`: DDPM, `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps` with the checkpoint's own
  `alphas_cumprod`; the network predicts `eps` or `v` (Stable Diffusion, SDXL, PixArt, DiT, IF).
* `FlowSchedule`: rectified flow, `x_t = (1 - sigma) x0 + sigma eps`; the network predicts
  `v = eps - x0` (SD3/SD3.5, FLUX.1).

Both turn a model output into estimates of `eps` and `x0` and give the signal-to-noise ratio of a
draw, so every objective (`objectives.schedule_errors`, the layer above: this module never imports
it) is defined once, in terms of those, and means the same on both processes. The scorer draws
integer timestep indices on a grid of `num_train_timesteps`; a schedule maps an index to its noise
level.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Optional

import torch

from .devices import to_device
from .settings import SIGMA_DISTRIBUTIONS, ScorerSettings

#: what a DDPM network may predict (a diffusers scheduler's `prediction_type`)
PREDICTION_TYPES = ("epsilon", "v_prediction")


def sigma_distribution_problem(settings: ScorerSettings, flow_matching: bool) -> Optional[str]:
    """Why `--diffusion_sigma_distribution` does not apply to a model (None if it does): only
    flow-matching models have a sigma to redistribute."""
    if settings.sigma_distribution != "model" and not flow_matching:
        return (f"--diffusion_sigma_distribution {settings.sigma_distribution} applies to flow-matching models "
                "only (SD3, FLUX); this model has a discrete DDPM schedule")
    return None


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class NoiseSchedule(ABC):
    """A family's noise process, seen through integer timestep indices in [0, num_train_timesteps)."""

    num_train_timesteps: int
    #: "discrete" or "flow"
    kind: str

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward-diffuse clean samples to x_t."""

    @abstractmethod
    def estimate(self, kind: str, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
                 ) -> torch.Tensor:
        """eps_hat ("epsilon"), x0_hat ("x0") or v_hat ("velocity", the flow velocity eps - x0)
        implied by a model output; only what `kind` needs is computed (an error needs one)."""

    @abstractmethod
    def is_output(self, kind: str) -> bool:
        """Whether the network's output already is the `kind` estimate (x_t and t are not needed)."""

    def estimates(self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps_hat, x0_hat, v_hat) implied by a model output."""
        return tuple(self.estimate(kind, model_output, x_t, timesteps) for kind in ("epsilon", "x0", "velocity"))

    @abstractmethod
    def network_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """What the backend's `predict` receives for each timestep index: the integer t of a DDPM
        model, sigma (float64) of a flow model."""

    @abstractmethod
    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio of each timestep index (float64, CPU)."""

    @abstractmethod
    def unit_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Position on the model's own noise axis in [0, 1] (t / T, or sigma): what
        `x0_heuristic` and `x0_buckets` weigh (float64, CPU)."""

    def bucket(self, timesteps: torch.Tensor, buckets: int) -> torch.Tensor:
        """Equal-width bucket of each timestep on the unit-time axis."""
        return torch.floor(self.unit_time(timesteps) * buckets).to(torch.int64).clamp(0, buckets - 1)

    def check(self, settings: ScorerSettings) -> None:
        """Reject settings that do not apply to this process."""

    def for_settings(self, settings: ScorerSettings) -> "NoiseSchedule":
        """The schedule a scorer with these settings draws on: this process, with whatever the scoring
        settings choose about it (a flow model's sigma distribution); rejects settings that do not apply."""
        self.check(settings)
        return self

    def describe(self) -> dict[str, Any]:
        """What a run's record says about the noise process."""
        return {"process": self.kind, "num_train_timesteps": self.num_train_timesteps}


class DiscreteSchedule(NoiseSchedule):
    """DDPM with a table of `alphas_cumprod`; `scheduler` (a diffusers scheduler with `add_noise`)
    does the noising when given, so it matches training exactly."""

    kind = "discrete"

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, scheduler: Optional[Any] = None) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; supported: {PREDICTION_TYPES}")
        self.alphas_cumprod = alphas_cumprod.to(torch.float64).cpu()
        self.prediction_type = prediction_type
        self.num_train_timesteps = len(self.alphas_cumprod)
        self.scheduler = scheduler

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> "DiscreteSchedule":
        """From a diffusers DDPM-type scheduler (its betas, and its own `add_noise`)."""
        return cls(scheduler.alphas_cumprod, scheduler.config.prediction_type, scheduler)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.scheduler is not None:
            return self.scheduler.add_noise(x0, noise, to_device(timesteps, x0.device))
        a = to_device(_broadcast(self.alphas_cumprod[timesteps.cpu()].to(torch.float32), x0), x0.device)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def network_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps

    def estimate(self, kind: str, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
                 ) -> torch.Tensor:
        if self.is_output(kind):
            return model_output
        alpha_bar = to_device(self.alphas_cumprod[timesteps.cpu()].to(torch.float32), x_t.device)
        a = _broadcast(alpha_bar.sqrt(), x_t)
        s = _broadcast((1 - alpha_bar).sqrt(), x_t)
        if self.prediction_type == "epsilon":
            eps_hat = model_output
            x0_hat = (x_t - s * eps_hat) / a
        else:  # v_prediction: v = a eps - s x0
            x0_hat = a * x_t - s * model_output if kind != "epsilon" else None
            eps_hat = s * x_t + a * model_output if kind != "x0" else None
        if kind == "velocity":
            return eps_hat - x0_hat
        return eps_hat if kind == "epsilon" else x0_hat

    def is_output(self, kind: str) -> bool:
        return kind == "epsilon" and self.prediction_type == "epsilon"

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alphas_cumprod[timesteps.cpu()]
        return alpha_bar / (1 - alpha_bar)

    def unit_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps.cpu().to(torch.float64) / self.num_train_timesteps

    def bucket(self, timesteps: torch.Tensor, buckets: int) -> torch.Tensor:
        # integer arithmetic: no float rounding at bucket edges
        return ((timesteps.cpu().to(torch.int64) * buckets) // self.num_train_timesteps).clamp(0, buckets - 1)

    def check(self, settings: ScorerSettings) -> None:
        problem = sigma_distribution_problem(settings, flow_matching=False)
        if problem:
            raise ValueError(problem)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prediction_type": self.prediction_type}


class FlowSchedule(NoiseSchedule):
    """Rectified flow (`x_t = (1 - sigma) x0 + sigma eps`, output `v = eps - x0`).

    Timestep index t in [0, T) becomes `u = (t + 1) / T` (the grid of diffusers'
    `FlowMatchEulerDiscreteScheduler`, so t = T - 1 is pure noise and no index is noise-free), then
    sigma by the distribution: "model" = the model's own shift (`shift` for SD3, or the
    exponential time shift with `mu` for FLUX), "uniform" = u, "logit_normal" =
    sigmoid(mean + std * Phi^-1((t + 0.5) / T)) (SD3's training distribution, as quantiles).
    """

    kind = "flow"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, mu: Optional[float] = None,
                 distribution: str = "model", logit_mean: float = 0.0, logit_std: float = 1.0,
                 time_shift: str = "exponential") -> None:
        if distribution not in SIGMA_DISTRIBUTIONS:
            raise ValueError(f"sigma distribution must be one of {SIGMA_DISTRIBUTIONS}, got {distribution!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.mu = mu
        self.distribution = distribution
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        #: how `mu` shifts sigma: "exponential" (FLUX, Qwen-Image) or "linear" (CogView4)
        self.time_shift = time_shift

    @classmethod
    def from_scheduler(cls, scheduler: Any, mu: Optional[float] = None) -> "FlowSchedule":
        """The model's own process from a diffusers `FlowMatchEulerDiscreteScheduler` config; `mu`
        for dynamic shifting."""
        config = scheduler.config
        if config.get("use_dynamic_shifting", False) and mu is None:
            raise ValueError("this flow model shifts sigma by resolution: a mu is needed")
        return cls(config.num_train_timesteps, shift=config.get("shift", 1.0),
                   mu=mu if config.get("use_dynamic_shifting", False) else None,
                   time_shift=config.get("time_shift_type", "exponential"))

    def for_settings(self, settings: ScorerSettings) -> "FlowSchedule":
        """This process with sigma distributed as the settings say (`sigma_distribution`, logit-normal
        mean and std); the model's shift and mu are kept."""
        self.check(settings)
        return FlowSchedule(self.num_train_timesteps, shift=self.shift, mu=self.mu,
                            distribution=settings.sigma_distribution, logit_mean=settings.logit_normal_mean,
                            logit_std=settings.logit_normal_std, time_shift=self.time_shift)

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise level of each timestep index, float64 on CPU."""
        t = timesteps.cpu().to(torch.float64)
        if self.distribution == "logit_normal":
            quantile = (t + 0.5) / self.num_train_timesteps
            normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64),
                                                torch.tensor(1.0, dtype=torch.float64))
            return torch.sigmoid(self.logit_mean + self.logit_std * normal.icdf(quantile))
        u = (t + 1) / self.num_train_timesteps
        if self.distribution == "uniform":
            return u
        if self.mu is not None and self.time_shift == "linear":  # CogView4 (diffusers' `_time_shift_linear`)
            return self.mu / (self.mu + (1 / u - 1))
        if self.mu is not None:  # FLUX: exponential time shift (diffusers' `time_shift`, sigma=1)
            return math.exp(self.mu) / (math.exp(self.mu) + (1 / u - 1))
        return self.shift * u / (1 + (self.shift - 1) * u)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = to_device(_broadcast(self.sigmas(timesteps).to(torch.float32), x0), x0.device)
        return (1 - sigma) * x0 + sigma * noise

    def network_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.sigmas(timesteps)

    def estimate(self, kind: str, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor
                 ) -> torch.Tensor:
        # x_t = (1 - s) x0 + s eps and v = eps - x0  =>  eps = x_t + (1 - s) v,  x0 = x_t - s v
        if self.is_output(kind):
            return model_output
        sigma = to_device(_broadcast(self.sigmas(timesteps).to(torch.float32), x_t), x_t.device)
        return x_t + (1 - sigma) * model_output if kind == "epsilon" else x_t - sigma * model_output

    def is_output(self, kind: str) -> bool:
        return kind == "velocity"

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(timesteps)
        return ((1 - sigma) / sigma) ** 2

    def unit_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.sigmas(timesteps)

    def describe(self) -> dict[str, Any]:
        linear = {"time_shift": "linear"} if self.time_shift == "linear" else {}
        return {**super().describe(), "prediction_type": "flow_velocity", "sigma_distribution": self.distribution,
                "shift": self.shift, "mu": self.mu, **linear}

    def unshifted(self, sigma: torch.Tensor) -> torch.Tensor:
        """The grid position u in (0, 1] a sigma of the model's own shift comes from (the inverse of
        `sigmas` for the "model" distribution): what CogView4 passes its network instead of sigma."""
        sigma = sigma.to(torch.float64)
        if self.mu is not None:
            scale = self.mu if self.time_shift == "linear" else math.exp(self.mu)
            return 1 / (1 + scale * (1 / sigma - 1))
        return sigma / (self.shift - (self.shift - 1) * sigma)


__all__ = ["NoiseSchedule", "DiscreteSchedule", "FlowSchedule", "PREDICTION_TYPES", "SIGMA_DISTRIBUTIONS",
           "sigma_distribution_problem"]
