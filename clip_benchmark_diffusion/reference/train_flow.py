"""Train the flow-matching reference model of the synthetic world and save it as an SD3 pipeline folder.

    python -m clip_benchmark_diffusion.reference.train_flow --out DIR --minutes 35 --threads 1 --seed 0

The result is a genuine `StableDiffusion3Pipeline` folder, only tiny: an MMDiT
(`SD3Transformer2DModel`), two CLIP text encoders with projections (SD3's CLIP-L and CLIP-G
roles), a tiny T5 encoder with its own Unigram tokenizer, `FlowMatchEulerDiscreteScheduler`, and
the VAE of the shipped SD-format reference model (frozen; its latents get SD3's shift and scale).
It is what lets the flow-matching half of the scorer (sigma draws, velocity targets, the SNR
weightings translated to flow matching) be checked on a model whose right answers are known.

Training is rectified flow as in SD3: `x_t = (1 - sigma) x0 + sigma eps`, the network, called at
timestep `1000 sigma`, predicts `eps - x0`; sigma uniform in (0, 1) or, with `--sigma-sampling
logit_normal`, SD3's logit-normal (the scheduler's `shift` is
1.0: 16 x 16 latents need none of the high-resolution shift of SD3's 3.0); ~10% empty captions.
Prompts are encoded by the pipeline's own `encode_prompt` inside the training step, so the model is
trained on exactly the conditioning the classifier gives it.

Why T5 is kept (tiny) rather than dropped: without a T5 the SD3 pipeline appends 256 zero tokens
to every prompt, and on a CPU the network then costs ~4x more per call (measured 9.8 vs 5.7 ms
per row for a comparable model); a 16-token T5 keeps calls cheap and exercises all three encoders.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import Optional

import torch
import torch.nn.functional as F

from . import REFERENCE_SD_DIR
from ._common import (LossLog, add_denoiser_arguments, begin_denoiser_run, count_parameters, make_readable,
                      remaining_minutes, require_budget, train_with_budget, write_summary)
from .tokenizer import MODEL_MAX_LENGTH, build_clip_tokenizer, build_t5_tokenizer, save_clip_tokenizer
from .train_diffusion import build_text_encoder, encode_latents, force_float32_configs, read_summary

LOG_FIELDS = ["phase", "step", "seconds", "lr", "loss"]
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


# --------------------------------------------------------------------------- model builders
def build_transformer(layers: int, heads: int, head_dim: int, joint_attention_dim: int, pooled_dim: int):
    """A small MMDiT on 4 x 16 x 16 latents, 2 x 2 patches (64 image tokens)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=joint_attention_dim,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=pooled_dim, pos_embed_max_size=8,
    )


def build_t5_encoder(vocab_size: int, width: int, layers: int, heads: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=width, d_kv=width // heads, d_ff=2 * width,
                                   num_layers=layers, num_heads=heads, relative_attention_num_buckets=8,
                                   pad_token_id=0, eos_token_id=1, dropout_rate=0.0))


def build_scheduler(shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def load_vae(folder: str):
    """The VAE of a pipeline folder, in float32, to be reused frozen."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)


def build_pipeline(args: argparse.Namespace, vae):
    """A new `StableDiffusion3Pipeline` of the given sizes around `vae`."""
    from diffusers import StableDiffusion3Pipeline

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    # SD3 concatenates the two CLIP states on channels and zero-pads them to T5's width, which is
    # the transformer's joint_attention_dim (4096 in SD3: 768 + 1280 padded)
    if args.t5_width < 2 * args.clip_hidden:
        raise ValueError(f"--t5-width ({args.t5_width}) must be at least twice --clip-hidden ({args.clip_hidden})")
    return StableDiffusion3Pipeline(
        transformer=build_transformer(args.layers, args.heads, args.head_dim, args.t5_width, 2 * args.clip_hidden),
        scheduler=build_scheduler(args.shift), vae=vae,
        text_encoder=build_text_encoder(args.clip_hidden, args.clip_layers, args.clip_heads, with_projection=True),
        tokenizer=clip_tokenizer,
        text_encoder_2=build_text_encoder(args.clip_hidden, args.clip_layers, args.clip_heads, with_projection=True),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=build_t5_encoder(len(t5_tokenizer), args.t5_width, args.t5_layers, args.t5_heads),
        tokenizer_3=t5_tokenizer,
    )


def load_pipeline(folder: str):
    """An existing reference flow pipeline, in float32, to train further."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(folder, torch_dtype=torch.float32)


# --------------------------------------------------------------------------- training
def latent_statistics(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
    """SD3's (shift_factor, scaling_factor): the latents' mean, and 1 / std after the shift."""
    sampled = mean + std * torch.randn(mean.shape, generator=generator)
    shift = float(sampled.mean())
    return shift, float(1.0 / (sampled - shift).std())


def sample_sigmas(kind: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """Training sigmas: uniform in (0, 1), or SD3's logit-normal (sigmoid of a standard normal),
    which puts more steps at mid noise, where the prompt decides most of the denoising."""
    if kind == "uniform":
        return torch.rand(count, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(torch.randn(count, generator=generator))
    raise ValueError(f"unknown sigma sampling {kind!r}")


def train_flow(pipe, latents: tuple[torch.Tensor, torch.Tensor], captions: list[str], args: argparse.Namespace,
               device: torch.device, log: LossLog, generator: torch.Generator) -> int:
    """Rectified-flow loss on the transformer and the three text encoders jointly."""
    mean, std = latents
    shift, scale = float(pipe.vae.config.shift_factor), float(pipe.vae.config.scaling_factor)
    trained = [pipe.transformer] + [getattr(pipe, name) for name in TEXT_ENCODERS]
    for module in trained:
        module.to(device).train()
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(mean), (args.batch_size,), generator=generator)
        x0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
        x0 = ((x0 - shift) * scale).to(device)
        drop = (torch.rand(args.batch_size, generator=generator) < args.caption_dropout).tolist()
        prompts = ["" if dropped else captions[i] for i, dropped in zip(index.tolist(), drop)]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        sigma = sample_sigmas(args.sigma_sampling, args.batch_size, generator).to(device)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        states, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=MODEL_MAX_LENGTH)
        prediction = pipe.transformer(hidden_states=noisy, timestep=sigma * num_train_timesteps,
                                      encoder_hidden_states=states, pooled_projections=pooled).sample
        return F.mse_loss(prediction, noise - x0)

    parameters = [p for module in trained for p in module.parameters()]
    steps = train_with_budget(parameters, batch_loss, phase="mmdit", lr=args.lr, weight_decay=args.weight_decay,
                              ema_decay=args.ema_decay, minutes=args.minutes_denoiser, steps=args.steps, log=log)
    for module in trained:
        module.eval()
    return steps


# --------------------------------------------------------------------------- saving
def save_flow_pipeline(out: str, pipe, half: bool = True) -> None:
    """Save the SD3 folder (float16 weights when `half`, configs saying float32, classic CLIP
    tokenizer files, which are smaller than tokenizer.json)."""
    pipe.to("cpu")
    if half:
        pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    if half:
        pipe.to(torch.float32)
        force_float32_configs(out, TEXT_ENCODERS)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(os.path.join(out, name))
        save_clip_tokenizer(os.path.join(out, name))
    make_readable(out)


# --------------------------------------------------------------------------- entry point
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_denoiser_arguments(parser, minutes_help="total wall-clock budget", steps_help="training steps (caps --minutes)",
                           init_help="continue from this SD3 folder (architecture flags ignored)",
                           batch_size=32, lr=8e-4)
    parser.add_argument("--vae-from", default=REFERENCE_SD_DIR, help="pipeline folder whose VAE is reused, frozen")
    parser.add_argument("--shift", type=float, default=1.0, help="the scheduler's sigma shift (SD3: 3.0)")
    parser.add_argument("--sigma-sampling", choices=("uniform", "logit_normal"), default="uniform",
                        help="training sigma distribution (SD3 trains with logit_normal)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--clip-hidden", type=int, default=32)
    parser.add_argument("--clip-layers", type=int, default=2)
    parser.add_argument("--clip-heads", type=int, default=2)
    parser.add_argument("--t5-width", type=int, default=64)
    parser.add_argument("--t5-layers", type=int, default=2)
    parser.add_argument("--t5-heads", type=int, default=4)
    args = parser.parse_args(argv)
    require_budget(parser, args)
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device, generator, started, log, images, captions, data_seconds = begin_denoiser_run(args, LOG_FIELDS)
    if args.init:
        pipe = load_pipeline(args.init)
        mean, std = encode_latents(pipe.vae.to(device), images, device)
    else:
        vae = load_vae(args.vae_from).to(device)
        mean, std = encode_latents(vae, images, device)
        shift, scale = latent_statistics(mean, std, generator)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        pipe = build_pipeline(args, vae)
    pipe.vae.requires_grad_(False)
    latent_seconds = time.monotonic() - started - data_seconds

    args.minutes_denoiser = remaining_minutes(args.minutes, started)
    steps = train_flow(pipe, (mean, std), captions, args, device, log, generator)
    log.close()
    save_flow_pipeline(args.out, pipe, half=not args.float32)
    summary = {
        "args": vars(args), "device": str(device), "steps": steps,
        "seconds": {"data": round(data_seconds, 1), "latents": round(latent_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
        "parameters": {name: count_parameters(getattr(pipe, name))
                       for name in ("vae", "transformer") + TEXT_ENCODERS},
        "shift_factor": float(pipe.vae.config.shift_factor), "scaling_factor": float(pipe.vae.config.scaling_factor),
        "init_summary": read_summary(args.init) if args.init else None,
    }
    write_summary(args.out, summary, ("steps", "seconds", "parameters"))


if __name__ == "__main__":
    main()
