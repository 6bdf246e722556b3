"""Every knob of the scorer in one frozen, serialisable record, each declared once.

The same object is built from Python, from the `clip_benchmark eval --diffusion_*` flags and
from a run's record header, so a run can be reproduced from what it wrote.

A setting is one field of `ScorerSettings`: its type (a `Literal` names its choices), default,
layer and flag (`setting(...)`). The choices tuples and their checks, `SETTING_LAYERS`, the
`--diffusion_*` flag with its help (`integration/flags.py`) and the README flags table are all
derived from that one declaration.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args, get_origin, get_type_hints

from .errors import UnsupportedSettings  # noqa: F401 (re-exported: its old home)

Objective = Literal["epsilon", "x0_snr", "x0_heuristic", "x0_buckets", "velocity"]
#: how a flow-matching model's sigma is drawn: its own timestep shift, uniform, or logit-normal
SigmaDistribution = Literal["model", "uniform", "logit_normal"]
Loss = Literal["l2", "l1", "huber"]
TimestepSampler = Literal["stratified", "uniform"]
TemplateMode = Literal["single", "average_errors", "average_embeddings"]
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
StrategyName = Literal["guaranteed", "fixed", "ttest", "schedule"]
TtestVariance = Literal["paired", "pooled"]
#: "off", or a `torch.compile` mode; "reduce-overhead" also captures CUDA graphs
CompileMode = Literal["off", "default", "max-autotune-no-cudagraphs", "reduce-overhead"]

OBJECTIVES = get_args(Objective)
SIGMA_DISTRIBUTIONS = get_args(SigmaDistribution)
LOSSES = get_args(Loss)
TIMESTEP_SAMPLERS = get_args(TimestepSampler)
TEMPLATE_MODES = get_args(TemplateMode)
DTYPES = get_args(Dtype)
STRATEGIES = get_args(StrategyName)
TTEST_VARIANCES = get_args(TtestVariance)
COMPILE_MODES = get_args(CompileMode)

#: What a setting can change. Everything that compares runs (resuming a record, sharing an error
#: cache) derives what it may ignore from the layers. A "scores" setting can change the error of a
#: given (image, draw, prompt), so nothing scored under another value of it is ever reused; so can a
#: "load" setting (how the model is loaded: dtype, resolution, text encoders, guidance input).
#: "allocation": where network calls go (which candidates get how many draws), not what one draw's
#: error is; "speed": how fast the denoiser runs, errors equal up to float rounding (see README,
#: "Reproducibility"); "adapter": how the adapter hands rankings to clip_benchmark, no error or
#: ranking depends on it.
Layer = Literal["scores", "load", "allocation", "speed", "adapter"]


@dataclass(frozen=True)
class Flag:
    """How a setting is given on the command line: `--diffusion_<name>` (the setting's own name unless
    `name` says otherwise). Its argparse type, choices and default come from the setting's field."""

    help: str  # "{default}" in it is replaced by the setting's default
    name: str = ""
    metavar: Optional[str] = None
    #: the flag defaults to None, not to the setting's default: not given, other flags decide
    optional: bool = False


def setting(default: Any, *, layer: Layer = "scores", flag: Optional[Flag] = None) -> Any:
    """One `ScorerSettings` field: its default, its layer, and its flag (None: no flag of its own)."""
    return field(default=default, metadata={"layer": layer, "flag": flag})


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

    draws: int = setting(1024, layer="allocation", flag=Flag(
        "(t, noise) draws per candidate: the full budget (the maximum of the adaptive strategies)"))
    timesteps: TimestepSampler = setting("stratified", flag=Flag("timestep sampling"))
    t_min: int = setting(0)  # with t_max: --diffusion_t_range
    t_max: Optional[int] = setting(None)
    objective: Objective = setting("epsilon", flag=Flag("error space and weighting"))
    bucket_weights: tuple = setting(())  # --diffusion_bucket_weights(_file)
    heuristic_rate: float = setting(7.0, flag=Flag("k in the x0_heuristic weight exp(-k t)"))
    loss: Loss = setting("l2", flag=Flag("per-element loss averaged over the latent"))
    templates: TemplateMode = setting("single", flag=Flag(
        "single: one prompt per class, the dataset's canonical one (the papers' protocol); average_errors: "
        "every template, errors averaged (cost x templates); average_embeddings: the mean text state of the "
        "templates (untested on real models)"))
    batch_size: int = setting(64, layer="speed", flag=Flag("UNet rows per call"))
    dtype: Dtype = setting("auto", layer="load", flag=Flag(
        "auto: on CUDA float16 (UNet families) or bfloat16 (flow/T5 families); float32 on CPU"))
    channels_last: bool = setting(False, layer="speed", flag=Flag("channels_last memory format for the denoiser"))
    compile: CompileMode = setting("off", layer="speed", flag=Flag(
        "torch.compile the denoiser in this mode (reduce-overhead: CUDA graphs); passes are padded to the next "
        "power of two rows"))
    seed: int = setting(0)  # clip_benchmark's own --seed
    sigma_distribution: SigmaDistribution = setting("model", flag=Flag(
        "flow-matching models: sigma from the model's own shift, uniform, or logit-normal"))
    logit_normal_mean: float = setting(0.0)  # with logit_normal_std: --diffusion_logit_normal
    logit_normal_std: float = setting(1.0)
    drop_t5: bool = setting(False, layer="load", flag=Flag(
        "SD3/SD3.5: run without the T5 text encoder (~9 GB less)", name="no_t5"))
    guidance: float = setting(1.0, layer="load", flag=Flag("FLUX.1-dev guidance input (1.0 = plain conditional)"))
    resolution: Optional[int] = setting(None, layer="load", flag=Flag(
        "score at this pixel size (default: the model's)"))
    strategy: StrategyName = setting("guaranteed", layer="allocation", flag=Flag(
        "guaranteed elimination (the full budget's answer with probability >= 1 - delta), fixed budget, "
        "t-test elimination, or multi-stage schedule (default: {default}, or schedule when --diffusion_schedule "
        "is given)", optional=True))
    delta: float = setting(0.01, layer="allocation", flag=Flag(
        "guaranteed: the answer equals the full budget's (--diffusion_draws for every candidate) with "
        "probability >= 1 - DELTA"))
    look_growth: float = setting(1.25, layer="allocation", flag=Flag(
        "guaranteed: each test after the first at this many times the previous draw count"))
    # t-test elimination (Clark & Jaini, Algorithm 1)
    ttest_p: float = setting(0.02, layer="allocation", flag=Flag("ttest: drop at p below this"))
    min_draws: int = setting(8, layer="allocation", flag=Flag(
        "guaranteed, ttest: draws of every candidate before the first test"))
    round_draws: int = setting(1, layer="allocation", flag=Flag("ttest: draws added per round"))
    ttest_variance: TtestVariance = setting("pooled", layer="allocation", flag=Flag(
        "t-test variance: per candidate pair (paired) or pooled over the open candidates (pooled)"))
    # multi-stage schedule (Li et al.): keep the best keep[i] after cumulative stage_draws[i]; --diffusion_schedule
    schedule_keep: tuple = setting((), layer="allocation")
    schedule_draws: tuple = setting((), layer="allocation")
    max_candidates: int = setting(4096, layer="adapter", flag=Flag(
        "most classes (or captions) one run can register; raise it for datasets with more classes"))
    # a hard budget of network evaluations per image (0 = none); adaptive strategies stop at it
    max_calls: int = setting(0, layer="allocation", flag=Flag(
        "at most N UNet calls per image (0: no cap); adaptive strategies decide at the cap and the record "
        "marks such images \"capped\"", metavar="N"))
    # CLIP pre-filter (Li et al.): only an open_clip model's top `prefilter_k` candidates are scored;
    # --diffusion_prefilter MODEL,PRETRAINED and --diffusion_prefilter_k
    prefilter_model: Optional[str] = setting(None, layer="allocation")
    prefilter_pretrained: Optional[str] = setting(None, layer="allocation")
    prefilter_k: int = setting(0, layer="allocation")
    # Read by nothing, yet kept: every record header's settings hold it (so it is part of the
    # settings fingerprint), and `from_dict` refuses unknown names; removing it would make every
    # existing record unreadable or unresumable, for no gain.
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .safety import check_numbers

        check_numbers(self)  # NaN, inf and sizes past the resource limits (issue 21)

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"invalid scorer setting: {message}")

        for name, choices in SETTING_CHOICES.items():
            value = getattr(self, name)
            check(value in choices, f"{name} must be one of {choices}, got {value!r}")
        check(self.draws >= 1, f"draws must be >= 1, got {self.draws}")
        check(self.t_min >= 0, f"t_min must be >= 0, got {self.t_min}")
        check(self.t_max is None or self.t_max >= self.t_min, f"t_max ({self.t_max}) must be >= t_min ({self.t_min})")
        check(self.objective != "x0_buckets" or len(self.bucket_weights) > 0,
              "objective 'x0_buckets' needs bucket_weights (one weight per equal-width timestep bucket)")
        check(all(w >= 0 for w in self.bucket_weights), "bucket weights must be >= 0")
        check(self.resolution is None or self.resolution >= 8, f"resolution must be >= 8, got {self.resolution}")
        check(self.logit_normal_std > 0, f"logit_normal_std must be > 0, got {self.logit_normal_std}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(0 < self.ttest_p < 1, f"ttest_p must be in (0, 1), got {self.ttest_p}")
        check(0 < self.delta < 1, f"delta must be in (0, 1), got {self.delta}")
        check(1 < self.look_growth <= 64, f"look_growth must be in (1, 64], got {self.look_growth}")
        check(self.min_draws >= 2, f"min_draws must be >= 2 (a t-test needs two draws), got {self.min_draws}")
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


#: the choices of every setting whose type is a `Literal`
SETTING_CHOICES: dict[str, tuple] = {name: get_args(hint) for name, hint in get_type_hints(ScorerSettings).items()
                                     if get_origin(hint) is Literal}
#: Which layer each setting that may be ignored somewhere belongs to (see `Layer`); derived from the
#: fields. A setting in none of these is a "scores" setting.
SETTING_LAYERS: dict[str, tuple[str, ...]] = {
    layer: tuple(f.name for f in dataclasses.fields(ScorerSettings) if f.metadata.get("layer") == layer)
    for layer in get_args(Layer) if layer != "scores"}


def settings_in_layers(*layers: str) -> frozenset[str]:
    """Names of the settings in the given layers ("allocation", "speed", "load", "adapter")."""
    unknown = set(layers) - set(SETTING_LAYERS)
    if unknown:
        raise ValueError(f"unknown setting layers {sorted(unknown)}; known: {sorted(SETTING_LAYERS)}")
    return frozenset(name for layer in layers for name in SETTING_LAYERS[layer])


#: settings that never change a record's contents beyond float rounding: records made under
#: other values of these are reused when a run resumes
RECORD_IGNORED_SETTINGS = settings_in_layers("speed", "adapter")
#: settings an error cache may differ in (they change where calls go, not any one error)
ERROR_CACHE_IGNORED_SETTINGS = settings_in_layers("allocation", "speed", "adapter")
