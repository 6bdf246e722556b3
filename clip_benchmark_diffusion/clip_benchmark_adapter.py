"""A diffusion scorer dressed as clip_benchmark's `(model, transform, tokenizer)` triple.

clip_benchmark's zero-shot loop calls `tokenizer(texts)` and `model.encode_text` once per
class (all its templates), then `model.encode_image` per image batch, and ranks classes by
`image_features @ class_embeddings`. Here the tokenizer maps prompts to ids of a prompt
table, `encode_text` registers one candidate per call, and `encode_image` runs the scorer
and returns features that encode the scorer's ranking exactly (see `rank_codec`).
Nothing here knows about UNets: the scorer and its backend do the work.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import torch
from tqdm import tqdm

from . import rank_codec
from .records import RunRecorder, image_record
from .scorer import DiffusionScorer, image_key_from_pixels


class PromptTokenizer:
    """Strings -> ids into a shared prompt table (the model reads the prompts back)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self._ids: dict[str, int] = {}

    def __call__(self, texts: Sequence[str] | str, context_length: Optional[int] = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = []
        for text in texts:
            if text not in self._ids:
                self._ids[text] = len(self.prompts)
                self.prompts.append(text)
            ids.append(self._ids[text])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self.prompts[int(i)] for i in ids.flatten()]


class DiffusionZeroShotModel(torch.nn.Module):
    """`encode_text` / `encode_image` on top of a `DiffusionScorer`."""

    def __init__(self, scorer: DiffusionScorer, tokenizer: PromptTokenizer, record_path: Optional[str] = None,
                 record_header: Optional[dict] = None, show_progress: bool = True) -> None:
        super().__init__()
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.record_path = record_path
        self.record_header = record_header or {}
        self.recorder: Optional[RunRecorder] = None
        self.capacity = scorer.settings.max_candidates
        self.candidates: list[list[str]] = []
        self.show_progress = show_progress
        self.expected_images: Optional[int] = None
        self.images_seen = 0
        self.calls = 0
        self._progress: Optional[tqdm] = None
        self._device_anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    # ------------------------------------------------------------ clip_benchmark interface
    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Register one candidate (a class's prompts) and return its one-hot embedding.
        Text encoded after images were scored starts a new candidate set."""
        if self.images_seen:
            self._start_new_candidate_set()
        prompts = self.tokenizer.decode(token_ids)
        self.candidates.append(prompts)
        self.scorer.encode_prompts(prompts)
        return rank_codec.class_embedding(len(self.candidates) - 1, self.capacity, len(prompts)).to(token_ids.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Score every registered candidate for each image; return rank-encoding features."""
        if not self.candidates:
            raise RuntimeError("encode_text must register the candidate classes before encode_image is called")
        rankings = self.rank(images)
        autocast_dtype = rank_codec.active_autocast_dtype(images.device.type)
        return rank_codec.encode_rankings(rankings, self.capacity, autocast_dtype).to(images.device)

    def _start_new_candidate_set(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        self.recorder = None
        self.candidates, self.images_seen = [], 0

    # ------------------------------------------------------------ scoring with records
    def rank(self, images: torch.Tensor) -> list[list[int]]:
        """Best-first candidate indices for each image, reusing recorded images."""
        keys = [image_key_from_pixels(image) for image in images]
        if self.record_path and self.recorder is None:
            # opened at the first image: the candidates are part of what makes records reusable
            self.recorder = RunRecorder(self.record_path, {**self.record_header, "candidates": self.candidates})
        cached = [self.recorder.cached(key) if self.recorder else None for key in keys]
        todo = [i for i, record in enumerate(cached) if record is None]
        results: dict[int, list[int]] = {i: record["ranking"] for i, record in enumerate(cached) if record}
        if todo:
            scores = self.scorer.score(images[todo], self.candidates, [keys[i] for i in todo],
                                       on_calls=self._count_calls)
            names = [prompts[0] for prompts in self.candidates]
            for i, image_scores in zip(todo, scores):
                results[i] = image_scores.ranking
                if self.recorder is not None:
                    self.recorder.add(image_record(self.images_seen + i, image_scores, names))
        self.images_seen += len(images)
        self._tick(len(images))
        return [results[i] for i in range(len(images))]

    def _bar(self) -> tqdm:
        if self._progress is None:
            self._progress = tqdm(total=self.expected_images, unit="img", desc="diffusion scoring",
                                  disable=not self.show_progress, file=sys.stderr, dynamic_ncols=True)
        return self._progress

    def _count_calls(self, calls: int) -> None:
        self.calls += calls
        self._bar().set_postfix(unet_calls=self.calls, refresh=False)

    def _tick(self, images: int) -> None:
        bar = self._bar()
        bar.update(images)
        bar.set_postfix(unet_calls=self.calls, calls_per_image=round(self.calls / max(self.images_seen, 1), 1))

    def finish(self, labels: Optional[Sequence[int]] = None) -> dict[str, Any]:
        """Close the progress bar and write the run summary (with true labels if known)."""
        if self._progress is not None:
            self._progress.close()
        summary: dict[str, Any] = {"images": self.images_seen, "unet_calls_this_session": self.calls}
        if labels is not None:
            summary["labels"] = [int(v) for v in labels]
        if self.recorder is not None:
            self.recorder.finish(summary)
        return summary


def load_zero_shot_model(pretrained: str, device: torch.device | str, settings, record_path: Optional[str] = None,
                         run_info: Optional[dict] = None, cache_dir: Optional[str] = None,
                         show_progress: bool = True):
    """clip_benchmark's loader contract: return `(model, transform, tokenizer)`."""
    from .checkpoints import load_backend

    backend = load_backend(pretrained, device=device, dtype=settings.dtype, cache_dir=cache_dir)
    scorer = DiffusionScorer(backend, settings)
    tokenizer = PromptTokenizer()
    header = {"settings": settings.to_dict(), "model": backend.description, "run": run_info or {}}
    model = DiffusionZeroShotModel(scorer, tokenizer, record_path=record_path, record_header=header,
                                   show_progress=show_progress)
    return model, backend.image_transform(), tokenizer
