"""One prompt per class, as both papers score: the dataset's canonical prompt.

Li et al. give one prompt per dataset (their Table 7 / code's templates); for other datasets the
first of clip_benchmark's templates is the canonical one (Clark & Jaini's rule: "the first CLIP
template"). ImageNet's first clip_benchmark template is "a bad photo of a {c}.", which is why the
table matters.
"""
from __future__ import annotations

from typing import Union

#: source: Li et al. 2023 ("Your Diffusion Model is Secretly a Zero-Shot Classifier"), the
#: per-dataset prompts of their code (also in benchmark_configs/li_templates.json)
CANONICAL_TEMPLATES: dict[str, str] = {
    "food101": "a photo of {c}, a type of food.",
    "cifar10": "a photo of a {c}.",
    "fgvc_aircraft": "a photo of a {c}, a type of aircraft.",
    "pets": "a photo of a {c}, a type of pet.",
    "flowers": "a photo of a {c}, a type of flower.",
    "stl10": "a photo of a {c}.",
    "imagenet1k": "a photo of a {c}.",
    "objectnet": "a photo of a {c}.",
}

Templates = Union[list, dict]


def canonical_templates(dataset: str, templates: Templates) -> Templates:
    """`templates` as clip_benchmark passes them (a list of "{c}" strings, or class -> prompts)
    cut to the one canonical prompt per class."""
    if isinstance(templates, dict):  # class-specific prompts: each class's first
        return {name: list(prompts)[:1] for name, prompts in templates.items()}
    name = dataset.replace("wds/", "", 1).split("/")[-1]
    known = CANONICAL_TEMPLATES.get(name)
    return [known] if known else list(templates)[:1]
