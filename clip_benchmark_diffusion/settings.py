"""Every knob of the scorer in one frozen, serialisable record.

The same object is built from Python, from the `clip_benchmark eval --diffusion_*` flags and
from a run's record header, so a run can be reproduced from what it wrote.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

OBJECTIVES = ("epsilon", "x0_snr", "x0_heuristic", "x0_buckets", "velocity")
#: how a flow-matching model's sigma is drawn: its own timestep shift, uniform, or logit-normal
SIGMA_DISTRIBUTIONS = ("model", "uniform", "logit_normal")
LOSSES = ("l2", "l1", "huber")
TIMESTEP_SAMPLERS = ("stratified", "uniform")
TEMPLATE_MODES = ("single", "average_errors", "average_embeddings")
DTYPES = ("auto", "float32", "float16", "bfloat16")
STRATEGIES = ("guaranteed", "fixed", "ttest", "schedule")
TTEST_VARIANCES = ("paired", "pooled")
#: "off", or a `torch.compile` mode; "reduce-overhead" also captures CUDA graphs
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")

#: Which layer each setting belongs to. Everything that compares runs (resuming a record,
#: sharing an error cache) derives what it may ignore from this one table. A setting not
#: listed is a *scoring* setting: it can change the error of a given (image, draw, prompt),
#: so nothing scored under another value of it is ever reused.
SETTING_LAYERS: dict[str, tuple[str, ...]] = {
    # where UNet calls go (which candidates get how many draws), not what one draw's error is
    "allocation": ("strategy", "draws", "delta", "look_growth", "ttest_p", "min_draws", "round_draws",
                   "ttest_variance", "schedule_keep", "schedule_draws", "prefilter_model", "prefilter_pretrained", "prefilter_k", "max_calls"),
    # how fast the denoiser runs; errors equal up to float rounding (see README, "Reproducibility")
    "speed": ("batch_size", "channels_last", "compile"),
    # how the adapter hands rankings to clip_benchmark; no error or ranking depends on it
    "adapter": ("max_candidates",),
}


def settings_in_layers(*layers: str) -> frozenset[str]:
    """Names of the settings in the given layers ("allocation", "speed", "adapter")."""
    unknown = set(layers) - set(SETTING_LAYERS)
    if unknown:
        raise ValueError(f"unknown setting layers {sorted(unknown)}; known: {sorted(SETTING_LAYERS)}")
    return frozenset(name for layer in layers for name in SETTING_LAYERS[layer])


#: settings that never change a record's contents beyond float rounding: records made under
#: other values of these are reused when a run resumes
RECORD_IGNORED_SETTINGS = settings_in_layers("speed", "adapter")
#: settings an error cache may differ in (they change where calls go, not any one error)
ERROR_CACHE_IGNORED_SETTINGS = settings_in_layers("allocation", "speed", "adapter")


class UnsupportedSettings(ValueError):
    """Settings that are valid on their own but that this model cannot serve (e.g. a
    timestep range beyond its schedule); raised before any data is read."""



@dataclass(frozen=True)
class ScorerSettings:
    """How candidate prompts are scored.

    draws: (t, noise) draws per candidate with the fixed strategy; the full budget (maximum) of
        the adaptive ones ("guaranteed", "ttest").
    timesteps: "stratified" (a low-discrepancy sequence: any power-of-two prefix is evenly
        spaced, as in Li et al.) or "uniform" (i.i.d., as in Clark & Jaini).
    t_min/t_max: restrict timesteps to [t_min, t_max] (t_max None = last training step).
    objective: error space and weighting: "epsilon" (unweighted epsilon error, Li et al.),
        "x0_snr" (x0 error weighted by SNR(t)), "x0_heuristic" (x0 error weighted by
        exp(-heuristic_rate * t/T), Clark & Jaini), "x0_buckets" (x0 error with one
        user weight per equal-width timestep bucket), "velocity" (unweighted error against
        eps - x0, the flow-matching target: Self-Bench's score). On flow-matching models the
        weights are the same functions of the SNR; "t/T" is sigma there.
    loss: per-element loss averaged over the latent: "l2", "l1" or "huber".
    templates: "single" scores each candidate's first prompt only (the papers' protocol: the
        integration puts the dataset's canonical prompt first); "average_errors" scores each
        template of a class and averages the errors (cost x templates); "average_embeddings"
        conditions once on the position-wise mean of the templates' text states (untested on real
        models: templates' tokens do not line up, so no model was trained on such a mean).
    strategy: "guaranteed" (successive elimination whose answer equals the full budget's with
        probability >= 1 - `delta`; see `strategies.GuaranteedElimination`), "fixed" (every
        candidate gets `draws` draws), "ttest" (t-test successive elimination, no guarantee) or
        "schedule" (fixed multi-stage keep-lists).
    delta: "guaranteed": the probability allowed for the answer to differ from the full budget's.
    min_draws: draws before the first test ("guaranteed", "ttest").
    look_growth: "guaranteed": each look tests at `look_growth` times the previous draw count.
    ttest_variance: "paired" (each candidate's differences to the best give their own
        variance, n-1 degrees of freedom: Clark & Jaini) or "pooled" (the residual variance of
        the candidates x draws block design, (k-1)(n-1) degrees of freedom: much stronger
        tests after a few draws when many candidates are open; identical for two candidates).
    sigma_distribution: flow-matching models only: "model" (the model's own timestep shift:
        SD3's `shift`, FLUX's resolution-dependent shift), "uniform" sigma, or "logit_normal"
        (`logit_normal_mean`, `logit_normal_std`, SD3's training distribution).
    drop_t5: SD3/SD3.5 only: do not load the T5 encoder (zeros in its place; SD3 was trained
        with encoder dropout); saves ~9 GB.
    guidance: FLUX.1-dev's guidance-embedding input (1.0 = plain conditional); ignored by
        models without a guidance embedding.
    resolution: pixel size images are scored at (None = the model's own; the families after SD
        1/2 also accept others, e.g. FLUX and SDXL at 512, with FLUX's shift following it).
    channels_last, compile: speed switches of the denoiser (see `backends/speed.py`); off by
        default until a GPU benchmark shows they help.
    """

    draws: int = 1024
    timesteps: str = "stratified"
    t_min: int = 0
    t_max: Optional[int] = None
    objective: str = "epsilon"
    bucket_weights: tuple = ()
    heuristic_rate: float = 7.0
    loss: str = "l2"
    templates: str = "single"
    batch_size: int = 64
    dtype: str = "auto"
    channels_last: bool = False
    compile: str = "off"
    seed: int = 0
    sigma_distribution: str = "model"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    drop_t5: bool = False
    guidance: float = 1.0
    resolution: Optional[int] = None
    strategy: str = "guaranteed"
    delta: float = 0.01
    look_growth: float = 1.25
    # t-test elimination (Clark & Jaini, Algorithm 1)
    ttest_p: float = 0.02
    min_draws: int = 8
    round_draws: int = 1
    ttest_variance: str = "pooled"
    # multi-stage schedule (Li et al.): keep the best keep[i] after cumulative stage_draws[i]
    schedule_keep: tuple = ()
    schedule_draws: tuple = ()
    max_candidates: int = 4096
    # a hard budget of network evaluations per image (0 = none); adaptive strategies stop at it
    max_calls: int = 0
    # CLIP pre-filter (Li et al.): only an open_clip model's top `prefilter_k` candidates are scored
    prefilter_model: Optional[str] = None
    prefilter_pretrained: Optional[str] = None
    prefilter_k: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid scorer setting: {message}")

        check(self.draws >= 1, f"draws must be >= 1, got {self.draws}")
        check(self.timesteps in TIMESTEP_SAMPLERS, f"timesteps must be one of {TIMESTEP_SAMPLERS}, got {self.timesteps!r}")
        check(self.t_min >= 0, f"t_min must be >= 0, got {self.t_min}")
        check(self.t_max is None or self.t_max >= self.t_min, f"t_max ({self.t_max}) must be >= t_min ({self.t_min})")
        check(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        check(self.objective != "x0_buckets" or len(self.bucket_weights) > 0,
              "objective 'x0_buckets' needs bucket_weights (one weight per equal-width timestep bucket)")
        check(all(w >= 0 for w in self.bucket_weights), "bucket weights must be >= 0")
        check(self.sigma_distribution in SIGMA_DISTRIBUTIONS,
              f"sigma_distribution must be one of {SIGMA_DISTRIBUTIONS}, got {self.sigma_distribution!r}")
        check(self.resolution is None or self.resolution >= 8, f"resolution must be >= 8, got {self.resolution}")
        check(self.logit_normal_std > 0, f"logit_normal_std must be > 0, got {self.logit_normal_std}")
        check(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        check(self.templates in TEMPLATE_MODES, f"templates must be one of {TEMPLATE_MODES}, got {self.templates!r}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        check(self.compile in COMPILE_MODES, f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        check(self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        check(0 < self.ttest_p < 1, f"ttest_p must be in (0, 1), got {self.ttest_p}")
        check(0 < self.delta < 1, f"delta must be in (0, 1), got {self.delta}")
        check(1 < self.look_growth <= 64, f"look_growth must be in (1, 64], got {self.look_growth}")
        check(self.min_draws >= 2, f"min_draws must be >= 2 (a t-test needs two draws), got {self.min_draws}")
        check(self.ttest_variance in TTEST_VARIANCES,
              f"ttest_variance must be one of {TTEST_VARIANCES}, got {self.ttest_variance!r}")
        check(self.round_draws >= 1, f"round_draws must be >= 1, got {self.round_draws}")
        check(self.strategy == "schedule" or not (self.schedule_keep or self.schedule_draws),
              f"schedule_keep/schedule_draws are only used by strategy 'schedule', not {self.strategy!r}")
        if self.strategy == "schedule":
            check(len(self.schedule_keep) == len(self.schedule_draws) > 0,
                  "strategy 'schedule' needs schedule_keep and schedule_draws of equal, non-zero length")
            check(list(self.schedule_draws) == sorted(set(self.schedule_draws)),
                  f"schedule_draws must be strictly increasing cumulative draws, got {self.schedule_draws}")
            check(list(self.schedule_keep) == sorted(self.schedule_keep, reverse=True) and self.schedule_keep[-1] >= 1,
                  f"schedule_keep must be non-increasing and >= 1, got {self.schedule_keep}")
        check(self.max_candidates >= 1, "max_candidates must be >= 1")
        check(self.max_calls >= 0, f"max_calls must be >= 0 (0 = no cap), got {self.max_calls}")
        check(self.prefilter_k >= 0, f"prefilter_k must be >= 0, got {self.prefilter_k}")
        check((self.prefilter_k > 0) == (self.prefilter_model is not None),
              "a CLIP pre-filter needs both a model and prefilter_k >= 1")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ScorerSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown scorer settings: {sorted(unknown)}")
        values = dict(values)
        for name in ("bucket_weights", "schedule_keep", "schedule_draws"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> "ScorerSettings":
        return dataclasses.replace(self, **changes)
