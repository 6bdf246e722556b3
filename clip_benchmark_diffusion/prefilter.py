"""CLIP pre-filter (Li et al.): an open_clip model ranks all candidates cheaply, and only its
top-k go to the diffusion scorer (ImageNet: ~1000 s -> 150 s per image, slightly more accurate).

Knows open_clip, not clip_benchmark. It takes the diffusion transform's pixels (in [-1, 1], at
the diffusion resolution, already centre-cropped) and re-normalises them for CLIP, so both
models see the same crop.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class ClipPrefilter:
    """Ranks candidates (lists of prompts) for images with an open_clip model."""

    def __init__(self, model_name: str, pretrained: str, device: torch.device | str = "cpu") -> None:
        import open_clip

        from .reference import register_reference_clip

        register_reference_clip()  # so the shipped `ref-world-clip` is a name like any open_clip model
        self.device = torch.device(device)
        self.model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.model = self.model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        normalize = [t for t in getattr(preprocess, "transforms", []) if hasattr(t, "mean") and hasattr(t, "std")]
        mean, std = (normalize[-1].mean, normalize[-1].std) if normalize else (open_clip.OPENAI_DATASET_MEAN,
                                                                               open_clip.OPENAI_DATASET_STD)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        size = self.model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self._class_embeddings: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def _embed_candidate(self, prompts: Sequence[str]) -> torch.Tensor:
        key = tuple(prompts)
        if key not in self._class_embeddings:
            text = F.normalize(self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float(), dim=-1)
            self._class_embeddings[key] = F.normalize(text.mean(dim=0), dim=-1)
        return self._class_embeddings[key]

    @torch.no_grad()
    def rank(self, pixels: torch.Tensor, candidates: Sequence[Sequence[str]]) -> list[list[int]]:
        """Every candidate, best first, for each image."""
        images = (pixels.float().cpu() + 1) / 2
        images = F.interpolate(images, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        images = ((images - self.mean) / self.std).to(self.device)
        features = F.normalize(self.model.encode_image(images).float(), dim=-1)
        classes = torch.stack([self._embed_candidate(prompts) for prompts in candidates], dim=1)
        return torch.argsort(features @ classes, dim=1, descending=True, stable=True).tolist()
