"""A diffusion scorer dressed as clip_benchmark's `(model, transform, tokenizer)` triple.

Zero-shot classification: clip_benchmark calls `tokenizer(texts)` and `model.encode_text`
once per class (all its templates), then `model.encode_image` per image batch, and ranks
classes by `image_features @ class_embeddings`. Here the tokenizer maps prompts to ids of a
prompt table, `encode_text` registers one candidate per call, and `encode_image` runs the
scorer and returns features that encode the scorer's ranking exactly (see `rank_codec`).

Image-caption selection (SugarCrepe/Winoground style): each batch's captions arrive in
one `encode_text` call, then its images. Each image is scored against its own instance's
captions. With several images per instance, the image-side choice uses the error minus
the image's unconditional (empty-prompt) error, as Diffusion-ITM does: some images are
easier to denoise whatever the caption, which would otherwise decide the match.

Nothing here knows about UNets: the scorer and its backend do the work.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from tqdm import tqdm

from . import rank_codec
from ..draws import image_key_from_pixels
from ..errors import NonFiniteError, say
from ..records import RunRecorder, image_record, read_records, settings_fingerprint
from .ranks import Shard, other_rank_records, rank_record_path
from ..scorer import DiffusionScorer
from ..strategies import call_bounds

if TYPE_CHECKING:  # only a type here; the checkpoints module loads lazily
    from ..checkpoints import Located


class PromptTokenizer:
    """Strings -> ids into a shared prompt table (the model reads the prompts back)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.last_texts: list[str] = []  # caption selection encodes images before texts
        self._ids: dict[str, int] = {}

    def __call__(self, texts: Sequence[str] | str, context_length: Optional[int] = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        self.last_texts = list(texts)
        ids = []
        for text in texts:
            if text not in self._ids:
                self._ids[text] = len(self.prompts)
                self.prompts.append(text)
            ids.append(self._ids[text])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self.prompts[int(i)] for i in ids.flatten()]


TASKS = ("zeroshot_classification", "image_caption_selection")


class DiffusionZeroShotModel(torch.nn.Module):
    """`encode_text` / `encode_image` on top of a `DiffusionScorer`."""

    #: how the registration's wrappers of clip_benchmark functions recognise this model
    is_diffusion_classifier = True
    #: score only the first of each class's templates (a protocol's "first template of the dataset" rule)
    first_template_only = False

    def __init__(self, scorer: DiffusionScorer, tokenizer: PromptTokenizer, record_path: Optional[str] = None,
                 record_header: Optional[dict] = None, show_progress: bool = True,
                 task: str = "zeroshot_classification", shard: Optional[Shard] = None) -> None:
        """`shard`: this process's place in a multi-process run (see `integration/ranks.py`); `record_path` is
        then the run's record, and this rank writes to its own file beside it."""
        super().__init__()
        self.shard = shard
        self.shard_stats: Optional[dict] = None  # rank 0: what the first pass did, once ranks are merged
        if task not in TASKS:
            raise ValueError(f"unsupported task {task!r}; supported: {TASKS}")
        self.task = task
        self.caption_layout: Optional[tuple[int, int]] = None  # (images, captions) per instance
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.record_path = record_path
        self.record_header = record_header or {}
        self.recorder: Optional[RunRecorder] = None
        self.capacity = scorer.settings.max_candidates
        self.prefilter = None
        if scorer.settings.prefilter_k > 0:
            from ..prefilter import ClipPrefilter

            self.prefilter = ClipPrefilter(scorer.settings.prefilter_model, scorer.settings.prefilter_pretrained,
                                           device=scorer.backend.device)
        self.candidates: list[list[str]] = []
        self.show_progress = show_progress
        self.expected_images: Optional[int] = None
        self.images_seen = 0
        self.images_reused = 0
        self.images_scored = 0  # scored in this session (the bar's calls per image are over these)
        self.images_elsewhere = 0  # left to other ranks (their rankings here are placeholders)
        self._scoring_started: Optional[float] = None  # first network call: the throughput clock
        self.calls = 0
        self._progress: Optional[tqdm] = None
        self._device_anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    @property
    def rank_record_path(self) -> Optional[str]:
        """The record this process writes: the run's record, or this rank's file beside it."""
        if self.shard is None or not self.record_path:
            return self.record_path
        return rank_record_path(self.record_path, self.shard.rank)

    # ------------------------------------------------------------ clip_benchmark interface
    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Register one candidate (a class's prompts) and return its one-hot embedding.
        Text encoded after images were scored starts a new candidate set."""
        if self.task == "image_caption_selection":
            return self._encode_captions(token_ids)
        if self.images_seen:
            self._start_new_candidate_set()
        prompts = self.tokenizer.decode(token_ids)[:1 if self.first_template_only else None]
        if len(self.candidates) >= self.capacity:
            from ..errors import UnsupportedSettings

            raise UnsupportedSettings(f"--diffusion_max_candidates {self.capacity} is below the number of classes "
                                      f"(at least {len(self.candidates) + 1}); raise it or drop the flag")
        self.candidates.append(prompts)
        self.scorer.encode_candidates([prompts])
        return rank_codec.class_embedding(len(self.candidates) - 1, self.capacity, len(prompts)).to(token_ids.device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Score every registered candidate for each image; return rank-encoding features."""
        if self.task == "image_caption_selection":
            return self._select_captions(images)
        if not self.candidates:
            raise RuntimeError("encode_text must register the candidate classes before encode_image is called")
        rankings = self.rank(images)
        autocast_dtype = rank_codec.active_autocast_dtype(images.device.type)
        return rank_codec.encode_rankings(rankings, self.capacity, autocast_dtype).to(images.device)

    # ------------------------------------------------------------ caption selection
    def _layout(self) -> tuple[int, int]:
        if self.caption_layout is None:
            raise RuntimeError("caption selection needs the batch layout (images, captions per instance); "
                               "run it through clip_benchmark's image_caption_selection task")
        return self.caption_layout

    def _encode_captions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Caption k of an instance gets one-hot e_k."""
        per_instance = self._layout()[1]
        rows = [rank_codec.class_embedding(k % per_instance, self.capacity, 1) for k in range(token_ids.numel())]
        return torch.cat(rows).to(token_ids.device)

    def _select_captions(self, images: torch.Tensor) -> torch.Tensor:
        """Per instance: score S[m, k] = -(error(image m, caption k) - unconditional error of
        image m), ranked jointly so both the per-image and the per-caption argmax survive."""
        images_per, captions_per = self._layout()
        all_captions = self.tokenizer.last_texts  # clip_benchmark tokenizes the batch's captions first
        instances = len(images) // images_per
        if instances * images_per != len(images) or instances * captions_per != len(all_captions):
            raise RuntimeError(f"caption batch layout mismatch: {len(images)} images and {len(all_captions)} "
                               f"captions for {images_per} images / {captions_per} captions per instance")
        autocast_dtype = rank_codec.active_autocast_dtype(images.device.type)
        features = []
        for i in range(instances):
            captions = all_captions[i * captions_per:(i + 1) * captions_per]
            candidates = [[caption] for caption in captions] + ([[""]] if images_per > 1 else [])
            errors = self._score_errors(images[i * images_per:(i + 1) * images_per], candidates)
            conditional = errors[:, :captions_per]
            scores = -(conditional - errors[:, captions_per:]) if images_per > 1 else -conditional
            features.append(rank_codec.encode_positions(rank_codec.joint_positions(scores), self.capacity,
                                                        autocast_dtype))
        self.images_seen += len(images)
        return torch.cat(features).to(images.device)

    def _score_errors(self, images: torch.Tensor, candidates: list[list[str]]) -> torch.Tensor:
        """Mean errors (images x candidates) for candidates specific to these images."""
        records = self._records_for(images, candidates, per_image_candidates=True)
        return torch.tensor([record["errors"] for record in records], dtype=torch.float64)

    def _recorder(self) -> Optional[RunRecorder]:
        """Open the record file at the first image (in classification the candidates are part of
        what makes earlier records reusable; in caption selection each record carries its own)."""
        if self.record_path and self.recorder is None:
            candidates = self.candidates if self.task == "zeroshot_classification" else None
            # every rank's earlier images count, whatever the world size was (one process included:
            # a torchrun job killed and resumed as a single process loses nothing)
            others = [p for p in [self.record_path] + other_rank_records(self.record_path)
                      if os.path.abspath(p) != os.path.abspath(self.rank_record_path)]
            header = {**self.record_header, "task": self.task, "candidates": candidates}
            if self.shard is not None and self.shard_stats is None:
                self._agree_with_other_ranks(header)
            self.recorder = RunRecorder(self.rank_record_path, header, also_read=others)
            if self.recorder.previous_images:
                self._say(f"{self.recorder.resumed_from} holds {self.recorder.previous_images} images scored with "
                          "these settings, weights and candidates; they are reused")
        return self.recorder

    def _agree_with_other_ranks(self, header: dict) -> None:
        """Ranks that loaded other weights (or registered other candidates) would write records
        rank 0 must throw away: refuse, naming the rank, before any image is scored."""
        self._candidate_sets = getattr(self, "_candidate_sets", 0) + 1
        model = header.get("model") or {}
        self.shard.agree(f"weights or candidates (set {self._candidate_sets})", {
            "weights": (model.get("weights") or {}).get("all"),
            "record fingerprint": settings_fingerprint({"type": "header", **header}),
            "candidates": len(header.get("candidates") or [])})

    @staticmethod
    def _say(message: str) -> None:
        say(message)

    def _start_new_candidate_set(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        self.recorder = None
        self.candidates, self.images_seen, self.images_reused, self.images_elsewhere = [], 0, 0, 0
        self.images_scored = 0

    # ------------------------------------------------------------ scoring with records
    def rank(self, images: torch.Tensor) -> list[list[int]]:
        """Best-first candidate indices for each image, reusing recorded images."""
        if self.images_seen == 0 and self.shard_stats is None:
            self._say(self.cost_preview())
        records = self._records_for(images, self.candidates)
        self.images_seen += len(images)
        return [record["ranking"] for record in records]

    def _records_for(self, images: torch.Tensor, candidates: list[list[str]],
                     per_image_candidates: bool = False) -> list[dict]:
        """The record of each image: from the record file when it was scored before with the same
        settings and candidates, else scored now (and appended to the file)."""
        names = [prompts[0] for prompts in candidates]
        keys = [image_key_from_pixels(image) for image in images]
        recorder = self._recorder()
        records = [recorder.cached(key) if recorder else None for key in keys]
        if per_image_candidates:  # caption selection: each record names its own candidates
            records = [r if r is not None and r.get("candidates") == names else None for r in records]
        todo = [i for i, record in enumerate(records) if record is None]
        self.images_reused += len(images) - len(todo)
        self._tick(len(images) - len(todo))
        if self.shard is not None and self.shard_stats is None:  # another rank may have claimed some of them
            mine = [i for i in todo if self.shard.claim(keys[i])]
            for i in set(todo) - set(mine):
                records[i] = {"ranking": list(range(len(candidates))), "errors": [0.0] * len(candidates)}
            self.images_elsewhere += len(todo) - len(mine)
            self._tick(len(todo) - len(mine))
            todo = mine
        if todo:
            previous_decision = [time.perf_counter()]

            def save(position: int, image_scores) -> None:
                """Write an image's line the moment its decision is made: a kill loses only images in flight."""
                now = time.perf_counter()
                i = todo[position]
                records[i] = image_record(self.images_seen + i, image_scores, names, now - previous_decision[0])
                previous_decision[0] = now
                if per_image_candidates:
                    records[i]["candidates"] = names
                if recorder is not None:
                    recorder.add(records[i])
                self.images_scored += 1
                self._tick(1)  # the bar moves per image, not per clip_benchmark batch

            priors = self.prefilter.rank(images[todo], candidates) if self.prefilter else None
            try:
                self.scorer.score(images[todo], candidates, [keys[i] for i in todo], on_calls=self._count_calls,
                                  prior_orders=priors, shortlist_size=self.scorer.settings.prefilter_k, on_image=save)
            except NonFiniteError as error:  # name the image by its place in the dataset too
                position = getattr(error, "position", None)
                where = f"dataset image {self.images_seen + todo[position]}, " if position is not None else ""
                raise NonFiniteError(where + str(error)) from None
        return records

    def _bar(self) -> tqdm:
        if self._progress is None:
            self._progress = tqdm(total=self.expected_images, unit="img", desc="diffusion scoring",
                                  disable=not self.show_progress, file=sys.stderr, dynamic_ncols=True,
                                  mininterval=0.5)
        return self._progress

    def cost_preview(self) -> str:
        """One line, before any network call: what each image and the whole dataset can cost."""
        settings = self.scorer.settings
        open_candidates = min(len(self.candidates), settings.prefilter_k or len(self.candidates))
        templates = max(len(prompts) for prompts in self.candidates)
        rows = (templates if settings.templates == "average_errors" else 1) * \
            self.scorer.backend.calls_per_prediction
        bounds = call_bounds(settings, open_candidates, rows)
        expected = f"{bounds.expected:,}" if bounds.expected is not None else \
            "depends on the images (the progress bar shows the running mean)"
        text = (f"{len(self.candidates)} candidates" + (f" (CLIP top-{open_candidates} scored)" if
                                                          open_candidates < len(self.candidates) else "")
                + f" x {templates} templates ({settings.templates}), strategy {settings.strategy}"
                + (f", cap {settings.max_calls:,}" if settings.max_calls else "")
                + f": UNet calls per image at most {bounds.most:,}, at least {bounds.fewest:,}, expected {expected}")
        if self.expected_images:
            text += f"; {self.expected_images:,} images: at most {bounds.most * self.expected_images:,}"
        return text

    def _count_calls(self, calls: int) -> None:
        if self._scoring_started is None:
            self._scoring_started = time.perf_counter()
        self.calls += calls

    def _tick(self, images: int) -> None:
        """Advance the bar by `images` (scored, reused or left to other ranks); its postfix shows
        network calls per image over the images scored in this session only (reused ones cost
        nothing now) and calls per second."""
        if images <= 0 and self._progress is not None:
            return
        bar = self._bar()
        seconds = time.perf_counter() - self._scoring_started if self._scoring_started else 0.0
        postfix = f"{self.calls:,} calls"
        if self.images_scored:
            postfix += f", {self.calls / self.images_scored:.1f}/img"
        if seconds > 0:
            postfix += f", {self.calls / seconds:.0f} calls/s"
        if self.images_reused:
            postfix += f", {self.images_reused} reused"
        bar.set_postfix_str(postfix, refresh=False)
        bar.update(images)

    def complete_shards(self) -> bool:
        """After clip_benchmark's pass over the dataset. On rank 0 of a multi-process run: wait for
        every rank, merge their images into the record, and return True: clip_benchmark must pass
        over the dataset once more (every image now comes from the record) for metrics over all
        images. False everywhere else."""
        if self.shard is None or self.shard.rank != 0 or self.shard_stats is not None:
            return False
        self.shard.wait_for_other_ranks()
        rank_files = other_rank_records(self.record_path)
        other_calls = sum((read_records(path)["summary"] or {}).get("unet_calls_this_session", 0)
                          for path in rank_files)
        recorder = self._recorder()
        merged = recorder.merge(rank_files) if recorder is not None else 0
        self.shard_stats = {"images": self.images_seen, "reused": self.images_reused,
                            "scored_here": self.images_seen - self.images_reused - self.images_elsewhere,
                            "merged_from_ranks": merged, "unet_calls_other_ranks": other_calls}
        self.images_seen = self.images_reused = self.images_elsewhere = 0
        if self._progress is not None:
            self._progress.reset(total=self.expected_images)
            self._progress.set_description("diffusion: collecting all ranks' images")
        return True

    def finish(self, labels: Optional[Sequence[int]] = None) -> dict[str, Any]:
        """Close the progress bar and write the run summary (with true labels if known)."""
        if self._progress is not None:
            self._progress.close()
        summary: dict[str, Any] = {"images": self.images_seen, "unet_calls_this_session": self.calls}
        if labels is not None:
            summary["labels"] = [int(v) for v in labels]
        if self.recorder is not None:
            if self.shard_stats is not None:  # rank 0 of a multi-process run
                stats = self.shard_stats
                summary.update(images_reused=stats["reused"], world_size=self.shard.world_size,
                               unet_calls_all_ranks=self.calls + stats["unet_calls_other_ranks"])
                message = (f"reused {stats['reused']} of {stats['images']} images from earlier runs; "
                           f"{stats['scored_here']} scored on rank 0, {stats['merged_from_ranks']} on the other "
                           f"{self.shard.world_size - 1} ranks, merged into {self.record_path}")
            else:
                summary["images_reused"] = self.images_reused
                if self.shard is None and self.record_path:  # a sharded job resumed as one process
                    merged = self.recorder.merge(other_rank_records(self.record_path))
                    if merged:
                        summary["merged_from_rank_records"] = merged
                if self.shard is not None:
                    summary.update(rank=self.shard.rank, images_left_to_other_ranks=self.images_elsewhere)
                message = (f"reused {self.images_reused} of {self.images_seen} images from {self.rank_record_path}; "
                           f"{self.images_seen - self.images_reused - self.images_elsewhere} scored"
                           + (f" on rank {self.shard.rank}" if self.shard is not None else ""))
            self.recorder.finish(summary)
            self._say(message)
            self.recorder = None  # a later pass reopens the file and reuses its records
        if self.shard is not None and self.shard.rank != 0:
            self.shard.finished()  # after this rank's summary is on disk: rank 0 reads it
        return summary


def load_zero_shot_model(pretrained: str, device: torch.device | str, settings, record_path: Optional[str] = None,
                         run_info: Optional[dict] = None, cache_dir: Optional[str] = None,
                         show_progress: bool = True, task: str = "zeroshot_classification",
                         shard: Optional[Shard] = None, protocol: Optional[dict] = None,
                         checkpoint: Optional[Located] = None):
    """clip_benchmark's loader contract: return `(model, transform, tokenizer)`. `protocol`: the
    run's `--diffusion_protocol` record (see `protocols.resolve`), written into the record header.
    `checkpoint`: what `checkpoints.locate` already found and checked for `pretrained` (a run's
    pre-load check), so the checkpoint is not looked up or checked again."""
    from ..backends.speed import SpeedOptions
    from ..checkpoints import load_backend
    from ..protocols import first_template_only

    speed = SpeedOptions(channels_last=settings.channels_last, compile_mode=settings.compile,
                         static_batch=settings.batch_size)
    backend = load_backend(pretrained, device=device, dtype=settings.dtype, cache_dir=cache_dir,
                           speed=speed, settings=settings, located=checkpoint)
    scorer = DiffusionScorer(backend, settings)
    tokenizer = PromptTokenizer()
    header = {"settings": settings.to_dict(), "model": backend.description, "run": run_info or {},
              "calls_per_prediction": backend.calls_per_prediction}
    if protocol is not None:
        header["protocol"] = protocol
    model = DiffusionZeroShotModel(scorer, tokenizer, record_path=record_path, record_header=header,
                                   show_progress=show_progress and (shard is None or shard.rank == 0), task=task,
                                   shard=shard)
    model.first_template_only = first_template_only(protocol)
    return model, backend.image_transform(), tokenizer
