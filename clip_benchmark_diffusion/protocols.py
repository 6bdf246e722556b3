"""Each paper's scoring protocol as plain data, resolved per dataset when a run starts.

`clip_benchmark eval --diffusion_protocol NAME` runs a whole suite (several datasets) with one set
of flags, but the papers set some things per dataset (Li et al.'s keep-lists, the prompts). So the
protocol is looked up again at the start of each dataset's run: the table below gives, per
protocol, the settings every dataset gets, the per-dataset entries the paper used, and a general
rule for any other dataset. Explicit `--diffusion_*` flags win over the protocol, and every
setting that then differs from what the protocol implied is recorded as an override (record
header, result JSON, leaderboard `protocol` column), so rows computed differently never look alike.

Each entry carries its source (the paper and what in it) and a note where the project cannot
express the paper's procedure exactly. Published accuracies (top-1, %) sit beside the entries for
`docs/protocols.md` and for users to put their numbers next to. The `default` protocol sets
nothing: it is whatever `ScorerSettings` defaults to.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional

from .errors import ProtocolError  # noqa: F401 (re-exported: its old home)

from .settings import RECORD_IGNORED_SETTINGS, ScorerSettings

#: prompt rules besides a literal template: the first of the dataset's own templates (clip_benchmark's
#: list, or a `wds/` dataset's own file), or every template clip_benchmark passes (the project default)
FIRST_TEMPLATE = "<first template of the dataset>"
ALL_TEMPLATES = "<the templates clip_benchmark passes, used as --diffusion_templates says>"
DEFAULT_PROTOCOL = "default"

_LI = "Li et al., \"Your Diffusion Model is Secretly a Zero-Shot Classifier\", ICCV 2023"
_LI_KEEP = "keep-list: the paper's adaptive evaluation for this dataset"
_LI_PROMPT = "prompt: benchmark_configs/li_templates.json"
_CJ = "Clark & Jaini, \"Text-to-Image Diffusion Models are Zero-Shot Classifiers\", NeurIPS 2023"
_SB = ("Jeong, Uselis, Oh, Rohrbach, \"Diffusion Classifiers Understand Compositionality, but Conditions "
       "Apply\" (Self-Bench), arXiv 2505.17955, NeurIPS 2025 D&B; SD3 scoring as in their code")
_PER_IMAGE_NOISE = ("Noise and timestep offset are drawn per image (seeded by the image's pixels), shared by all "
                    "candidates of that image; the paper shares one noise per timestep across every image too")


def _li(keep: str, prompt: str, acc: Optional[float], clip: Optional[tuple] = None) -> dict[str, Any]:
    stages = [stage.split("@") for stage in keep.split(",")]
    entry = {"settings": {"schedule_keep": [int(k) for k, _ in stages],
                          "schedule_draws": [int(d) for _, d in stages]},
             "prompt": prompt, "source": f"{_LI_KEEP}; {_LI_PROMPT}"}
    if acc is not None:
        entry["published"] = {"SD 2.0-base": acc, **({"CLIP RN50": clip[0], "OpenCLIP ViT-H/14": clip[1]}
                                                      if clip else {})}
    return entry


def _cj(prompt: str, sd: float, imagen: float, clip: float) -> dict[str, Any]:
    return {"settings": {}, "prompt": prompt,
            "source": "their main table: one prompt per dataset, the first CLIP template "
                      "(benchmark_configs/clark_jaini_templates.json)",
            "published": {"SD 1.4": sd, "Imagen": imagen, "CLIP ViT-L/14": clip}}


PROTOCOLS: dict[str, dict[str, Any]] = {
    DEFAULT_PROTOCOL: {
        "title": "this project's defaults",
        "paper_model": None,
        "settings": {},
        "source": "clip_benchmark_diffusion/settings.py, ScorerSettings defaults",
        "general": {"settings": {}, "prompt": ALL_TEMPLATES,
                    "source": "ScorerSettings defaults; the templates clip_benchmark passes "
                              "(or --custom_template_file)"},
        "datasets": {},
    },
    "li2023": {
        "title": _LI,
        "paper_model": "sd2-base",
        # every dataset: unweighted epsilon L2, t evenly spaced over [1, 1000], Li's multi-stage schedule
        "settings": {"objective": "epsilon", "loss": "l2", "timesteps": "stratified", "t_min": 0, "t_max": None,
                     "strategy": "schedule", "templates": "average_errors", "sigma_distribution": "model",
                     "prefilter_model": None, "prefilter_pretrained": None, "prefilter_k": 0, "max_calls": 0},
        "source": f"{_LI}: epsilon MSE, t evenly spaced over [1, 1000], shared noise",
        "note": ("'Stratified' timesteps: any power-of-two prefix of the project's sequence is evenly spaced; "
                 "Li et al.'s 50 / 500 draws are evenly strided grids, here a low-discrepancy prefix of that "
                 f"length (nearly, not exactly, even). {_PER_IMAGE_NOISE}. One prompt per class, so the "
                 "templates mode does not matter; it is set so a default mode cannot replace the prompt."),
        "general": {**_li("20@20,10@50,5@100,1@500", FIRST_TEMPLATE, None),
                    "source": "other datasets: the Food-101/Aircraft/Flowers keep-list, used for three of their "
                              "eight datasets (a stage that keeps more than the classes there keeps them all)",
                    "note": "a rule of this project (the paper has no general rule); prompt: the dataset's "
                            "first CLIP template, as for their other datasets"},
        "datasets": {
            "cifar10": _li("5@50,1@500", "a photo of a {c}.", 88.5, (75.6, 97.3)),
            "pets": _li("5@25,1@250", "a photo of a {c}, a type of pet.", 87.3, (85.4, 94.6)),
            "stl10": _li("5@100,1@500", "a photo of a {c}.", 95.4, (94.3, 98.3)),
            "food101": _li("20@20,10@50,5@100,1@500", "a photo of {c}, a type of food.", 77.7, (81.1, 92.7)),
            "fgvc_aircraft": _li("20@20,10@50,5@100,1@500", "a photo of a {c}, a type of aircraft.", 26.4,
                                 (19.3, 42.3)),
            "flowers": _li("20@20,10@50,5@100,1@500", "a photo of a {c}, a type of flower.", 66.3, (65.9, 79.9)),
            "imagenet1k": _li("500@50,50@100,10@500,1@1000", "a photo of a {c}.", 61.4, (58.2, 76.8)),
            "objectnet": {**_li("500@50,50@100,10@500,1@1000", "a photo of a {c}.", 43.4, (40.0, 69.2)),
                          "note": "no ObjectNet keep-list of theirs in this project's notes; ImageNet's is used "
                                  "(ObjectNet is scored with ImageNet's classifier)"},
        },
    },
    "clark2023": {
        "title": _CJ,
        "paper_model": "sd1.4",
        "settings": {"objective": "x0_heuristic", "heuristic_rate": 7.0, "loss": "l2", "timesteps": "uniform",
                     "t_min": 0, "t_max": None, "strategy": "ttest", "ttest_variance": "paired",
                     "ttest_p": 0.002, "min_draws": 20, "round_draws": 4, "draws": 2000,
                     "templates": "average_errors", "sigma_distribution": "model",
                     "prefilter_model": None, "prefilter_pretrained": None, "prefilter_k": 0, "max_calls": 0},
        "source": (f"{_CJ}: x0 error weighted exp(-7t), t ~ U(0, 1), shared (t, noise) per round; Algorithm 1: "
                   "paired t-test against the best, drop at p < 2e-3, at least 20 and at most 2000 draws"),
        "note": ("4 draws per round: this project's choice (issue 23); the paper adds shared draws round by "
                 "round, its round size is not in this project's notes. The test is one-sided against the "
                 "current best. Each draw's (t, noise) is shared by every class of an image, as in the paper. "
                 "Their main table used 4096-example subsets; the protocol scores every image of the split."),
        "general": {"settings": {}, "prompt": FIRST_TEMPLATE,
                    "source": "other datasets: one prompt per dataset, the dataset's first template (their rule)"},
        "datasets": {
            "cifar10": _cj("a photo of a {c}.", 72.1, 96.6, 94.7),
            "cifar100": _cj("a photo of a {c}.", 45.3, 84.3, 68.6),
            "stl10": _cj("a photo of a {c}.", 92.8, 99.6, 99.6),
            "mnist": _cj("a photo of the number: \"{c}\".", 19.1, 79.2, 74.3),
            "dtd": _cj("a photo of a {c} texture.", 44.6, 37.3, 36.0),
            "svhn": _cj("a photo of the number {c} written on a sign", 13.4, 62.7, 21.5),
            "eurosat": _cj("a centered satellite photo of {c}.", 12.4, 60.3, 58.0),
            "cars": _cj("a photo of a {c}.", 77.8, 81.0, 75.8),
            "imagenet1k": {**_cj("a photo of a {c}.", 61.9, 62.7, 75.1),
                           "note": "clip_benchmark's first ImageNet template is 'a bad photo of a {c}.'; "
                                   "CLIP's default prompt is used instead (benchmark_configs/README.md)"},
            "caltech101": _cj("a photo of a {c}.", 73.0, 68.9, 84.1),
            "pets": _cj("a photo of a {c}, a type of pet.", 72.5, 66.5, 89.9),
            "food101": _cj("a photo of {c}, a type of food.", 71.6, 68.4, 93.3),
        },
    },
    "selfbench2025": {
        "title": "Self-Bench (Jeong et al. 2025)",
        "paper_model": "sd3-medium",
        "settings": {"objective": "velocity", "loss": "l2", "timesteps": "stratified", "t_min": 0, "t_max": None,
                     "strategy": "fixed", "draws": 30, "sigma_distribution": "model", "templates": "average_errors",
                     "prefilter_model": None, "prefilter_pretrained": None, "prefilter_k": 0, "max_calls": 0},
        "source": f"{_SB}: target noise - x0, shifted sigmas (shift 3), 30 timesteps at an even stride, MSE",
        "note": ("'model' sigmas are the model's own shift: 3 for SD3-medium, other values for other models. "
                 "30 'stratified' draws are a low-discrepancy prefix, nearly but not exactly an even stride of "
                 f"30. {_PER_IMAGE_NOISE}. On a DDPM model the velocity target is eps - x0 as well."),
        "general": {"settings": {}, "prompt": FIRST_TEMPLATE,
                    "source": "Self-Bench's compositional sets are not clip_benchmark datasets, so every dataset gets "
                              "the same scoring; prompt: the dataset's first template (a rule of this project)"},
        "datasets": {},
    },
}

def protocol_names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown --diffusion_protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return name


def dataset_keys(dataset: str) -> list[str]:
    """Names a dataset is looked up under: as given, without `wds/` (or `vtab/`, `tfds/`), and its last
    part, so `wds/vtab/pets` finds `pets` as clip_benchmark's template lookup does."""
    keys = [dataset]
    for prefix in ("wds/", "vtab/", "tfds/"):
        if keys[-1].startswith(prefix):
            keys.append(keys[-1][len(prefix):])
    keys.append(dataset.rsplit("/", 1)[-1])
    return list(dict.fromkeys(keys))


def dataset_entry(name: str, dataset: str) -> tuple[Optional[str], dict[str, Any]]:
    """(the table key that matched, or None for the general rule; the entry with the protocol's
    common settings merged in)."""
    protocol = PROTOCOLS[check_protocol(name)]
    key = next((k for k in dataset_keys(dataset) if k in protocol["datasets"]), None)
    entry = protocol["datasets"][key] if key is not None else protocol["general"]
    return key, {**entry, "settings": {**protocol["settings"], **entry.get("settings", {})}}


def implied_values(name: str, dataset: str) -> dict[str, Any]:
    """The ScorerSettings fields protocol `name` sets for `dataset` (the rest stay at their defaults)."""
    values = dict(dataset_entry(name, dataset)[1]["settings"])
    for field in ("schedule_keep", "schedule_draws", "bucket_weights"):
        if field in values:
            values[field] = tuple(values[field])
    return values


def resolve(name: str, dataset: str, values: dict[str, Any], explicit: Iterable[str]
            ) -> tuple[ScorerSettings, dict[str, Any]]:
    """Settings of one dataset's run and what the record says about its protocol.

    `values`: ScorerSettings fields from the command line (flag defaults included); `explicit`: the
    fields the user's `--diffusion_*` flags set (`integration.flags.FLAG_SETTINGS`). The protocol's
    values replace the others; then every field that differs from what the protocol implied is an override."""
    key, entry = dataset_entry(name, dataset)
    implied = implied_values(name, dataset)
    given = set(explicit)
    if "strategy" in given and values.get("strategy") != "schedule":
        given |= {"schedule_keep", "schedule_draws"}  # another strategy: the protocol's keep-list does not apply
    merged = {**values, **{k: v for k, v in implied.items() if k not in given}}
    if merged.get("strategy") is None:
        merged.pop("strategy", None)
    settings = ScorerSettings(**merged)
    seed = values.get("seed", ScorerSettings.seed)
    protocol_settings = ScorerSettings(seed=seed, **implied).to_dict()
    actual = settings.to_dict()
    overrides = {k: v for k, v in actual.items() if v != protocol_settings[k]}
    return settings, {
        "name": name,
        "label": protocol_label(name, overrides),
        "dataset": dataset,
        "rule": f"dataset entry '{key}'" if key is not None else "general rule",
        "prompt": entry.get("prompt", ALL_TEMPLATES),
        "paper_model": PROTOCOLS[name]["paper_model"],
        "source": "; ".join(s for s in (PROTOCOLS[name]["source"], entry.get("source")) if s),
        "note": " ".join(n for n in (PROTOCOLS[name].get("note"), entry.get("note")) if n),
        "published": entry.get("published", {}),
        "implied": protocol_settings,
        "overrides": overrides,
    }


def protocol_label(name: str, overrides: dict[str, Any]) -> str:
    """`li2023`, or `li2023 [loss=l1]` when settings that change results were overridden (speed and
    adapter settings never change them and are left out of the label, not out of the record)."""
    changed = {k: v for k, v in overrides.items() if k not in RECORD_IGNORED_SETTINGS}
    if not changed:
        return name
    shown = ", ".join(f"{k}={(','.join(map(str, v)) or 'none') if isinstance(v, (list, tuple)) else v}"
                      for k, v in sorted(changed.items()))
    return f"{name} [{shown}]"


def apply_prompt(record: dict[str, Any], custom_template_file: Optional[str]) -> Optional[list[str]]:
    """The templates a run must pass to clip_benchmark for the protocol's prompt (None: leave
    clip_benchmark's as they are). A `--custom_template_file` wins; when it gives this dataset other
    templates than the protocol's, that is recorded as a `prompt` override (and in the label)."""
    prompt = record["prompt"]
    if not custom_template_file:
        return [prompt] if prompt not in (FIRST_TEMPLATE, ALL_TEMPLATES) else None
    try:
        with open(custom_template_file, encoding="utf-8") as handle:
            table = json.load(handle)
        given = next((table[k] for k in dataset_keys(record["dataset"]) + ["imagenet1k"] if k in table), None)
    except (OSError, ValueError):
        given = None  # clip_benchmark reports a bad file itself
    if given != [prompt] and prompt != ALL_TEMPLATES:
        record["overrides"]["prompt"] = given if given is not None else custom_template_file
        record["prompt_source"] = f"--custom_template_file {os.path.basename(custom_template_file)}"
        record["label"] = protocol_label(record["name"], {**record["overrides"]})
    return None


def first_template_only(record: Optional[dict[str, Any]]) -> bool:
    """Whether the model should keep only the first of each class's templates (the protocol's prompt
    is the dataset's first template and no --custom_template_file replaced it)."""
    return bool(record) and record["prompt"] == FIRST_TEMPLATE and "prompt" not in record["overrides"]
