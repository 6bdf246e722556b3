"""Quick zero-shot accuracy of a reference diffusion model on the world's test tasks.

    python -m clip_benchmark_diffusion.reference.quick_eval --model DIR --n 60 --draws 64

A deliberately minimal, self-contained version of the diffusion classifier (it uses only the
pipeline's components, none of the package's scorer), so a model can be measured while it is
being trained or tuned: for each image and its K candidate prompts it estimates
E_{t,eps} ||eps - unet(x_t, t, prompt)||^2 with the *same* (t, eps) draws for every prompt
(paired draws cancel most of the Monte-Carlo noise) and predicts the prompt of lowest error.
Timesteps are stratified over [t_min, t_max] with a random shift per image.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional

import torch
from PIL import Image

from ._common import images_to_tensor, pick_device

TASK_NAMES = ("shape", "colour", "colour_shape", "binding")


class DenoisingClassifier:
    """Scores candidate prompts of one image by their Monte-Carlo denoising error."""

    def __init__(self, model_dir: str, device: torch.device, batch_size: int = 512):
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None,
                                                           requires_safety_checker=False)
        self.vae = pipeline.vae.to(device).eval()
        self.unet = pipeline.unet.to(device).eval()
        self.text_encoder = pipeline.text_encoder.to(device).eval()
        self.tokenizer = pipeline.tokenizer
        self.alphas_cumprod = pipeline.scheduler.alphas_cumprod.to(device)
        self.num_timesteps = pipeline.scheduler.config.num_train_timesteps
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device)).last_hidden_state

    @torch.no_grad()
    def errors(self, image: torch.Tensor, prompt_embeddings: torch.Tensor, draws: int, t_min: int, t_max: int,
               generator: torch.Generator) -> torch.Tensor:
        """Mean denoising error of each prompt, shape [K], for one image in [-1, 1] of shape [3, H, W]."""
        latent = self.vae.encode(image[None].to(self.device)).latent_dist.mean * self.vae.config.scaling_factor
        shift = torch.rand((), generator=generator)
        span = t_max - t_min + 1
        timesteps = (t_min + ((torch.arange(draws) + shift) / draws * span).floor().long()).clamp(t_min, t_max)
        noise = torch.randn((draws, *latent.shape[1:]), generator=generator).to(self.device)
        alpha_bar = self.alphas_cumprod[timesteps.to(self.device)].view(-1, 1, 1, 1)
        noisy = alpha_bar.sqrt() * latent + (1 - alpha_bar).sqrt() * noise
        num_prompts = len(prompt_embeddings)
        # every (prompt, draw) pair, flattened so the UNet runs in large batches
        prompt_index = torch.arange(num_prompts).repeat_interleave(draws)
        draw_index = torch.arange(draws).repeat(num_prompts)
        timesteps = timesteps.to(self.device)
        total = torch.zeros(num_prompts, device=self.device)
        for start in range(0, len(prompt_index), self.batch_size):
            p = prompt_index[start:start + self.batch_size].to(self.device)
            d = draw_index[start:start + self.batch_size].to(self.device)
            prediction = self.unet(noisy[d], timesteps[d], encoder_hidden_states=prompt_embeddings[p]).sample
            total.index_add_(0, p, (prediction - noise[d]).pow(2).flatten(1).mean(1))
        return total / draws


def task_items(task: str, n: int) -> list[tuple[Image.Image, list[str], int]]:
    """(PIL image, candidate prompts, index of the right prompt) for `n` test samples of a world task."""
    from clip_benchmark_diffusion.world import TEMPLATES, binding_samples, classification_samples, classnames

    if task == "binding":
        return [(image, list(texts), 0) for image, texts in binding_samples(n)]
    prompts = [TEMPLATES[0].format(c=name) for name in classnames(task)]
    return [(image, prompts, label) for image, label in classification_samples(task, n)]


def evaluate(model_dir: str, tasks: tuple[str, ...] = TASK_NAMES, n: int = 60, draws: int = 64, t_min: int = 0,
             t_max: int = 999, seed: int = 0, device: str = "auto", verbose: bool = True) -> dict[str, float]:
    """Accuracy per task (fraction of the first `n` test samples whose right prompt has the lowest error)."""
    classifier = DenoisingClassifier(model_dir, pick_device(device))
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, float] = {}
    for task in tasks:
        started = time.monotonic()
        items = task_items(task, n)
        embeddings: dict[tuple[str, ...], torch.Tensor] = {}
        correct = 0
        for done, (image, prompts, answer) in enumerate(items, start=1):
            key = tuple(prompts)
            if key not in embeddings:
                embeddings[key] = classifier.embed(prompts)
            errors = classifier.errors(images_to_tensor([image])[0], embeddings[key], draws, t_min, t_max, generator)
            correct += int(errors.argmin().item() == answer)
            if verbose and done % 12 == 0 and done < len(items):
                print(f"  {task}: {correct}/{done} so far", flush=True)
        results[task] = correct / len(items)
        if verbose:
            print(f"{task}: {results[task]:.3f} ({correct}/{len(items)}, {draws} draws, t in [{t_min}, {t_max}], "
                  f"{time.monotonic() - started:.0f}s)", flush=True)
    return results


@torch.no_grad()
def evaluate_clip(weights: str, tasks: tuple[str, ...] = TASK_NAMES, n: int = 60, verbose: bool = True
                  ) -> dict[str, float]:
    """Zero-shot accuracy of a reference open_clip model (of the shipped architecture) on the same tasks."""
    import open_clip

    from . import REFERENCE_CLIP_MODEL, register_reference_clip

    register_reference_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(REFERENCE_CLIP_MODEL, pretrained=weights)
    tokenizer = open_clip.get_tokenizer(REFERENCE_CLIP_MODEL)
    model.eval()
    results: dict[str, float] = {}
    for task in tasks:
        correct, items = 0, task_items(task, n)
        for image, prompts, answer in items:
            image_features = model.encode_image(preprocess(image)[None])
            text_features = model.encode_text(tokenizer(prompts))
            similarity = torch.nn.functional.normalize(image_features, dim=-1) @ \
                torch.nn.functional.normalize(text_features, dim=-1).t()
            correct += int(similarity.argmax().item() == answer)
        results[task] = correct / len(items)
        if verbose:
            print(f"clip {task}: {results[task]:.3f} ({correct}/{len(items)})", flush=True)
    return results


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="diffusers pipeline folder")
    target.add_argument("--clip", help="reference open_clip weights file (zero-shot CLIP baseline instead)")
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=TASK_NAMES)
    parser.add_argument("--n", type=int, default=60, help="test samples per task")
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--t-min", type=int, default=0)
    parser.add_argument("--t-max", type=int, default=999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the accuracies to this file")
    args = parser.parse_args(argv)
    if args.clip:
        record = {"clip": args.clip, "n": args.n, "accuracy": evaluate_clip(args.clip, tuple(args.tasks), args.n)}
    else:
        results = evaluate(args.model, tuple(args.tasks), args.n, args.draws, args.t_min, args.t_max, args.seed,
                           args.device)
        record = {"model": args.model, "n": args.n, "draws": args.draws, "t_min": args.t_min, "t_max": args.t_max,
                  "accuracy": results}
    print(json.dumps(record))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)


if __name__ == "__main__":
    main()
