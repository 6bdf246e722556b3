"""Train the reference open_clip model of the synthetic world (a contrastive baseline for the diffusion classifier).

    python -m clip_benchmark_diffusion.reference.train_clip --out weights/ref-world-clip.safetensors --minutes 8

The model is an ordinary open_clip `CLIP` with a small custom config (a 4-layer ViT on 4 x 4
patches of 32 px images; a 2-layer text transformer on CLIP's 49408-token vocabulary with a
16-token context, width 32 so that the embedding table stays at 3 MB) trained contrastively on
the world's captions. It writes the state dict as safetensors (float16 by default; open_clip
upcasts it into its float32 model on load) and, next to it, `<stem>.json`, the open_clip model
config: `open_clip.add_model_config` registers it under the name `<stem>`, hence the default
file name `ref-world-clip.safetensors`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._common import (LossLog, TimeBudget, count_parameters, finish_step, make_readable, schedule_learning_rate,
                      start_run, world_dataset)

MODEL_NAME = "ref-world-clip"
CONTEXT_LENGTH = 16
#: open_clip model config of the reference CLIP (registered under MODEL_NAME).
MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "head_width": 32, "layers": 4},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def config_path_for(weights_path: str) -> str:
    """The model-config JSON that goes with a weights file: same folder, same stem."""
    return os.path.splitext(weights_path)[0] + ".json"


def build_model():
    """A freshly initialised open_clip CLIP of MODEL_CONFIG (no registration needed)."""
    from open_clip.model import CLIP

    return CLIP(**MODEL_CONFIG)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE in which identical captions are all positives.

    The world has only ~1300 distinct captions, so a batch often holds the same caption
    twice; plain CLIP loss would push those true pairs apart.
    """
    logits = logit_scale * image_features @ text_features.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def train(model, images: torch.Tensor, token_ids: torch.Tensor, caption_ids: torch.Tensor,
          args: argparse.Namespace, device: torch.device, log: LossLog) -> int:
    """AdamW on the contrastive loss until the time/step budget is spent. Returns the number of steps."""
    generator = torch.Generator().manual_seed(args.seed)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    # normalisation of the default open_clip transform (OpenAI mean/std) applied to [-1, 1] images
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
    budget = TimeBudget(args.minutes, args.steps)
    progress = tqdm(desc="clip", unit="step", total=args.steps)
    while not budget.done():
        schedule_learning_rate(optimizer, args.lr, budget, warmup_steps=50)
        index = torch.randint(len(images), (args.batch_size,), generator=generator)
        pixels = ((images[index].to(device) + 1) / 2 - mean) / std
        image_features = F.normalize(model.encode_image(pixels), dim=-1)
        text_features = F.normalize(model.encode_text(token_ids[index].to(device)), dim=-1)
        loss = contrastive_loss(image_features, text_features, model.logit_scale.exp(), caption_ids[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # CLIP's cap of 100 on the temperature
        finish_step("clip", budget, optimizer, log, progress, {"loss": f"{loss.item():.3f}"}, loss=loss.item())
    progress.close()
    model.eval()
    return budget.step


def save(model, out: str, half: bool = True) -> None:
    """Write the state dict (safetensors) and the open_clip config JSON beside it."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(state, out, metadata={"format": "pt", "model": MODEL_NAME})
    with open(config_path_for(out), "w", encoding="utf-8") as handle:
        json.dump(MODEL_CONFIG, handle, indent=2)
    make_readable(out)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="weights file (.safetensors); the config goes to <stem>.json")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps (caps --minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=20000, help="distinct world samples to train on")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--float32", action="store_true", help="save float32 weights instead of float16")
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes and/or --steps")
    if not args.out.endswith(".safetensors"):
        parser.error("--out must end with .safetensors")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    import open_clip

    args = parse_args(argv)
    device = start_run(args.threads, args.seed, args.device)
    started = time.monotonic()
    images, captions = world_dataset(args.samples, seed=args.seed)
    tokenizer = open_clip.tokenize  # the standard CLIP BPE tokenizer, at our context length
    token_ids = tokenizer(captions, context_length=CONTEXT_LENGTH)
    distinct = {caption: index for index, caption in enumerate(sorted(set(captions)))}
    caption_ids = torch.tensor([distinct[caption] for caption in captions])

    model = build_model()
    log_path = os.path.splitext(args.out)[0] + "_training_log.csv"
    log = LossLog(log_path, ["phase", "step", "seconds", "lr", "loss"])
    steps = train(model, images, token_ids, caption_ids, args, device, log)
    log.close()
    save(model.cpu(), args.out, half=not args.float32)
    print(json.dumps({"steps": steps, "parameters": count_parameters(model),
                      "seconds": round(time.monotonic() - started, 1), "out": args.out}))


if __name__ == "__main__":
    main()
