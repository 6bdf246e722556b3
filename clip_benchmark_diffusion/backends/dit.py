"""Class-conditional DiT (DiT-XL/2 256 and 512): candidates are ImageNet class ids, not prompts."""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Sequence

import torch

from .base import Conditioning
from .pipeline_backend import PipelineBackend

LOG = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def imagenet_prompts() -> tuple[dict[str, int], frozenset]:
    """clip_benchmark's imagenet1k class names and every template rendering of them -> class index
    (clip_benchmark's index of imagenet1k is DiT's label; a name two classes share keeps the first),
    and the set of bare names (prompts that are not template renderings)."""
    import clip_benchmark.datasets as datasets

    folder = os.path.dirname(datasets.__file__)
    with open(os.path.join(folder, "en_classnames.json")) as handle:
        names = json.load(handle)["imagenet1k"]
    with open(os.path.join(folder, "en_zeroshot_classification_templates.json")) as handle:
        templates = json.load(handle)["imagenet1k"]
    lookup: dict[str, int] = {}
    for label, name in enumerate(names):
        lookup.setdefault(name, label)
        for template in templates:
            lookup.setdefault(template.format(c=name), label)
    return lookup, frozenset(names)


class DiTBackend(PipelineBackend):
    """epsilon DiT on VAE latents (* 0.18215); learned variance (first 4 of 8 channels scored);
    conditioning = the class label. Works on imagenet1k, whose class names (and their template
    renderings) map to labels; any other prompt stops with one error."""

    diffusers_class = "DiTPipeline"
    family = "dit"
    parts = ("vae", "transformer", "scheduler")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._said_templates = False

    @property
    def num_classes(self) -> int:
        return int(self.denoiser.config.num_embeds_ada_norm)

    def label(self, prompt: str) -> int:
        """The class id a prompt stands for, or UnsupportedPromptError."""
        from ..errors import UnsupportedPromptError

        key = prompt.strip()
        lookup, names = imagenet_prompts()
        label = lookup.get(key, self.pipe.labels.get(key))
        if label is None or label >= self.num_classes:
            raise UnsupportedPromptError(
                f"DiT is class-conditional on ImageNet labels: prompt {prompt!r} is not an imagenet1k class name "
                "(or a clip_benchmark template of one); use it with --dataset imagenet1k")
        if not self._said_templates and key not in names and key not in self.pipe.labels:
            LOG.warning("DiT: prompt templates do not apply to a class-conditional model; every template of a "
                        "class gives the same class id (use one template, or --diffusion_templates "
                        "average_embeddings, to avoid repeating identical rows)")
            self._said_templates = True
        return label

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        return Conditioning(class_ids=torch.tensor([self.label(p) for p in prompts], dtype=torch.int64))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, c: Conditioning) -> torch.Tensor:
        return self._denoiser(x, timestep=t, class_labels=c.class_ids).sample

