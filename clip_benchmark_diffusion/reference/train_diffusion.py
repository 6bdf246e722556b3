"""Train the reference Stable Diffusion model of the synthetic world and save it as a diffusers folder.

    python -m clip_benchmark_diffusion.reference.train_diffusion --out DIR --minutes 30 --seed 0

The result is a genuine `StableDiffusionPipeline` folder (VAE, CLIP text encoder, CLIP tokenizer,
conditional UNet, DDPM scheduler), only tiny: it lets the diffusion classifier be tested end to
end, offline, on a model whose right answers are known. Training has two phases:

1. the `AutoencoderKL` (32 px -> 4 x 16 x 16 latents) on reconstruction + a small KL term; its
   `scaling_factor` is then set to 1 / std of the latents, as SD does, so the diffusion model
   sees unit-variance latents;
2. the UNet and the text encoder jointly, on SD's epsilon-prediction loss with uniformly drawn
   timesteps and ~10% empty captions (so the unconditional prediction is trained too).

Both phases are budgeted in wall-clock minutes (or steps) and anneal their learning rate to the
end of the budget. A CSV loss log and a JSON summary are written next to the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._common import (LossLog, TimeBudget, add_denoiser_arguments, begin_denoiser_run, count_parameters, finish_step,
                      make_readable, remaining_minutes, require_budget, schedule_learning_rate, train_with_budget,
                      write_summary)
from .tokenizer import MODEL_MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer, save_clip_tokenizer

LOG_FIELDS = ["phase", "step", "seconds", "lr", "loss", "recon", "kl"]


# --------------------------------------------------------------------------- model builders
def build_vae(channels: tuple[int, ...] = (16, 32)):
    """A two-level `AutoencoderKL`: one downsampling, so 32 px images become 16 x 16 latents."""
    from diffusers import AutoencoderKL

    levels = len(channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=min(32, channels[0] // 2),
        mid_block_add_attention=False,  # 256-token attention costs a lot on CPU and adds little here
    )


def build_text_encoder(hidden: int, layers: int, heads: int, with_projection: bool = False):
    """A small CLIP text transformer on CLIP's full 49408-token vocabulary (with the pooled
    projection head that SDXL's and SD3's pipelines read when `with_projection`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=MODEL_MAX_LENGTH, projection_dim=hidden,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_unet(channels: tuple[int, ...], layers_per_block: int, heads: int, cross_attention_dim: int,
               attention_from_level: int):
    """A small SD-style UNet on 16 x 16 latents; cross-attention from level `attention_from_level` down.

    Attention at the 16 x 16 level is the most expensive part on CPU, so it can be skipped there.
    """
    from diffusers import UNet2DConditionModel

    levels = len(channels)
    down = tuple("CrossAttnDownBlock2D" if i >= attention_from_level else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if block == "CrossAttnDownBlock2D" else "UpBlock2D" for block in reversed(down))
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, down_block_types=down, up_block_types=up,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=heads,  # diffusers: = number of heads
        norm_num_groups=min(32, channels[0] // 2),
    )


def build_scheduler():
    """Stable Diffusion's noise schedule (1000 steps, scaled-linear betas 0.00085 -> 0.012, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )


def tokenize(texts: list[str]) -> torch.Tensor:
    """Token ids padded to the model's context, exactly as `StableDiffusionPipeline.encode_prompt` does."""
    return build_clip_tokenizer()(texts, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                                  return_tensors="pt").input_ids


# --------------------------------------------------------------------------- training phases
def train_vae(vae, images: torch.Tensor, args: argparse.Namespace, device: torch.device, log: LossLog,
              generator: torch.Generator) -> int:
    """Reconstruction (MSE) + `kl_weight` x per-element KL. Returns the number of steps run."""
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    budget = TimeBudget(args.vae_minutes, args.vae_steps)
    progress = tqdm(desc="vae", unit="step", total=args.vae_steps)
    while not budget.done():
        schedule_learning_rate(optimizer, args.vae_lr, budget, warmup_steps=50)
        batch = images[torch.randint(len(images), (args.vae_batch_size,), generator=generator)].to(device)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        recon = F.mse_loss(reconstruction, batch)
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = recon + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        finish_step("vae", budget, optimizer, log, progress, {"recon": f"{recon.item():.4f}", "kl": f"{kl.item():.2f}"},
                    loss=loss.item(), recon=recon.item(), kl=kl.item())
    progress.close()
    vae.eval()
    return budget.step


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device: torch.device, batch_size: int = 512
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled), so training can sample latents cheaply."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(images[start:start + batch_size].to(device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def train_denoiser(unet, text_encoder, scheduler, latents: tuple[torch.Tensor, torch.Tensor],
                   token_ids: torch.Tensor, empty_ids: torch.Tensor, args: argparse.Namespace,
                   device: torch.device, log: LossLog, generator: torch.Generator) -> int:
    """SD's epsilon loss on (UNet, text encoder) jointly, with caption dropout; EMA weights at the end."""
    mean, std = latents
    unet.to(device).train()
    text_encoder.to(device).train()
    alphas_cumprod = scheduler.alphas_cumprod.to(device)

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(mean), (args.batch_size,), generator=generator)
        x0 = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)).to(device)
        x0 = x0 * args.scaling_factor
        ids = token_ids[index].clone()
        drop = torch.rand(args.batch_size, generator=generator) < args.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        timesteps = timesteps.to(device)
        a = alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
        noisy = a * x0 + s * noise  # = scheduler.add_noise, without its per-call dtype/device shuffling
        hidden = text_encoder(ids.to(device)).last_hidden_state
        prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        return F.mse_loss(prediction, noise)

    steps = train_with_budget(list(unet.parameters()) + list(text_encoder.parameters()), batch_loss, phase="unet",
                              lr=args.lr, weight_decay=args.weight_decay, ema_decay=args.ema_decay,
                              minutes=args.minutes_denoiser, steps=args.steps, log=log)
    unet.eval()
    text_encoder.eval()
    return steps


def load_components(folder: str):
    """(vae, text_encoder, unet) of an existing reference pipeline, in float32, to train further."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return (AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32),
            CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32),
            UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32))


# --------------------------------------------------------------------------- saving
def save_pipeline(out: str, vae, text_encoder, unet, scheduler, half: bool = True) -> None:
    """Save a `StableDiffusionPipeline` folder; weights in float16 when `half` (halves the size).

    Every component's config still says float32 (see `force_float32_configs`) so a plain
    `from_pretrained(out)` upcasts the stored halves and the pipeline runs in float32 on CPU.
    """
    from diffusers import StableDiffusionPipeline

    tokenizer = build_clip_tokenizer()
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.to("cpu")
    if half:
        pipeline.to(torch.float16)
    pipeline.save_pretrained(out, safe_serialization=True)
    if half:
        pipeline.to(torch.float32)
        force_float32_configs(out)
    # The classic vocab.json + merges.txt layout loads with every transformers version and is
    # less than half the size of tokenizer.json.
    shutil.rmtree(os.path.join(out, "tokenizer"))
    save_clip_tokenizer(os.path.join(out, "tokenizer"))
    make_readable(out)


def force_float32_configs(out: str, parts: tuple[str, ...] = ("text_encoder",)) -> None:
    """Record float32 as the text encoders' dtype: transformers>=5 loads in the config's dtype by default."""
    for part in parts:
        path = os.path.join(out, part, "config.json")
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = "float32"
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)


def read_summary(folder: str) -> Optional[dict]:
    """The training summary of the run a continued run started from (provenance of shipped weights)."""
    path = os.path.join(folder, "training_summary.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# --------------------------------------------------------------------------- entry point
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_denoiser_arguments(
        parser, minutes_help="total wall-clock budget; the VAE gets --vae-fraction of it",
        steps_help="UNet steps (caps --minutes)", batch_size=64, lr=1e-3,
        init_help="continue from this pipeline folder (its VAE is kept; architecture flags are ignored)")
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE steps (caps the VAE's share of --minutes)")
    parser.add_argument("--vae-fraction", type=float, default=0.12)
    parser.add_argument("--unet-channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--attention-heads", type=int, default=4)
    parser.add_argument("--attention-from-level", type=int, default=1,
                        help="first UNet level with (self+cross) attention; 1 skips the 16x16 level")
    parser.add_argument("--text-hidden", type=int, default=64)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--text-heads", type=int, default=4)
    parser.add_argument("--vae-channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--vae-batch-size", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    args = parser.parse_args(argv)
    require_budget(parser, args)
    if args.minutes is None and args.vae_steps is None and args.init is None:
        parser.error("with --steps alone, also give --vae-steps")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device, generator, started, log, images, captions, data_seconds = begin_denoiser_run(args, LOG_FIELDS)
    if args.init:
        vae, text_encoder, unet = load_components(args.init)
        vae_steps = 0
        mean, std = encode_latents(vae.to(device), images, device)
    else:
        vae = build_vae(tuple(args.vae_channels))
        args.vae_minutes = None if args.minutes is None else args.minutes * args.vae_fraction
        vae_steps = train_vae(vae, images, args, device, log, generator)
        mean, std = encode_latents(vae, images, device)
        sampled = mean + std * torch.randn(mean.shape, generator=generator)
        vae.register_to_config(scaling_factor=float(1.0 / sampled.std()))
        text_encoder = build_text_encoder(args.text_hidden, args.text_layers, args.text_heads)
        unet = build_unet(tuple(args.unet_channels), args.layers_per_block, args.attention_heads, args.text_hidden,
                          args.attention_from_level)
    args.scaling_factor = float(vae.config.scaling_factor)
    vae_seconds = time.monotonic() - started - data_seconds

    token_ids, empty_ids = tokenize(captions), tokenize([""])[0]
    scheduler = build_scheduler()
    args.minutes_denoiser = remaining_minutes(args.minutes, started)
    unet_steps = train_denoiser(unet, text_encoder, scheduler, (mean, std), token_ids, empty_ids, args, device,
                                log, generator)
    log.close()

    vae.to("cpu")
    save_pipeline(args.out, vae, text_encoder.to("cpu"), unet.to("cpu"), scheduler, half=not args.float32)
    summary = {
        "args": vars(args), "device": str(device), "vae_steps": vae_steps, "unet_steps": unet_steps,
        "seconds": {"data": round(data_seconds, 1), "vae": round(vae_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
        "parameters": {"vae": count_parameters(vae), "unet": count_parameters(unet),
                       "text_encoder": count_parameters(text_encoder)},
        "scaling_factor": args.scaling_factor,
        "init_summary": read_summary(args.init) if args.init else None,
    }
    write_summary(args.out, summary, ("unet_steps", "vae_steps", "seconds", "parameters"))


if __name__ == "__main__":
    main()
