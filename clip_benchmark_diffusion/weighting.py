"""Learned timestep weighting (Clark & Jaini): fit 20 bucket weights on held-out records, and
compare weightings offline on the records of a test split.

    python -m clip_benchmark_diffusion.weighting fit --records HELD_OUT.diffusion.jsonl ... --out weights.json
    python -m clip_benchmark_diffusion.weighting compare --records TEST.diffusion.jsonl ... --weights weights.json

Why offline: a fixed-budget record holds every candidate's per-draw error and the draws' timesteps.
With the L2 loss each objective's per-draw error is w(t) * ||x0 - x0_hat||^2 (the epsilon objective
is the SNR(t) weighting, exactly), so dividing by the record's own weight recovers the unweighted x0
error, and any other weighting is a multiplication away. One run therefore measures every weighting,
at every power-of-two prefix of its draws (stratified timesteps keep each prefix evenly spread).

The fit: candidate k's score under bucket weights w is sum_b w_b F_kb, with
F_kb = (1/N) sum of its x0 errors over the draws whose timestep falls in bucket b; that is exactly
the error `--diffusion_objective x0_buckets` computes. A softmax over -score (multinomial logistic
regression) is fit by L-BFGS-B with w >= 0 and a small ridge penalty; the file it writes is read by
`--diffusion_bucket_weights_file`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

BUCKETS = 20
WEIGHTINGS = ("uniform", "heuristic", "snr", "learned")


@dataclass
class DrawErrors:
    """Unweighted per-draw x0 errors of a set of images, from fixed-budget records."""

    errors: np.ndarray  # (images, candidates, draws)
    timesteps: np.ndarray  # (images, draws), integers in [0, T)
    labels: np.ndarray  # (images,)
    alphas_cumprod: np.ndarray  # (T,)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def first(self, draws: int) -> "DrawErrors":
        """The first `draws` draws of every image (a cheaper fixed budget on the same draws)."""
        if draws > self.errors.shape[2]:
            raise ValueError(f"the records hold {self.errors.shape[2]} draws, not {draws}")
        return DrawErrors(self.errors[:, :, :draws], self.timesteps[:, :draws], self.labels, self.alphas_cumprod)

    def concat(self, other: "DrawErrors") -> "DrawErrors":
        if not np.array_equal(self.alphas_cumprod, other.alphas_cumprod):
            raise ValueError("records of models with different noise schedules cannot be pooled")
        if self.errors.shape[1:] != other.errors.shape[1:]:
            raise ValueError("records with different candidates or draws cannot be pooled")
        return DrawErrors(np.concatenate([self.errors, other.errors]), np.concatenate([self.timesteps, other.timesteps]),
                          np.concatenate([self.labels, other.labels]), self.alphas_cumprod)


# ------------------------------------------------------------------------------------------ weightings
def timestep_weights(name: str, timesteps: np.ndarray, alphas_cumprod: np.ndarray, heuristic_rate: float = 7.0,
                     bucket_weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """w(t) of a weighting of x0 errors, elementwise over integer `timesteps`: `uniform` (1),
    `heuristic` (exp(-k t/T)), `snr` (alpha_bar / (1 - alpha_bar): the epsilon objective), `learned`
    (one weight per equal-width bucket)."""
    count = len(alphas_cumprod)
    if name == "uniform":
        return np.ones(timesteps.shape)
    if name == "heuristic":
        return np.exp(-heuristic_rate * timesteps / count)
    if name == "snr":
        alpha_bar = alphas_cumprod[timesteps]
        return alpha_bar / (1 - alpha_bar)
    if name == "learned":
        if bucket_weights is None:
            raise ValueError("the learned weighting needs bucket weights")
        weights = np.asarray(bucket_weights, dtype=np.float64)
        return weights[bucket_index(timesteps, count, len(weights))]
    raise ValueError(f"unknown weighting {name!r}; expected one of {WEIGHTINGS}")


def bucket_index(timesteps: np.ndarray, num_train_timesteps: int, buckets: int = BUCKETS) -> np.ndarray:
    """Equal-width bucket of each timestep, as `objectives.timestep_weight` computes it."""
    return np.clip((timesteps.astype(np.int64) * buckets) // num_train_timesteps, 0, buckets - 1)


def record_weights(settings: dict, timesteps: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """The weight each recorded per-draw error carries under the record's own objective."""
    objective = settings.get("objective", "epsilon")
    if settings.get("loss", "l2") != "l2":
        raise ValueError(f"only L2 records can be re-weighted (x0 and epsilon errors are proportional only "
                         f"for L2); this record uses {settings.get('loss')!r}")
    if objective in ("epsilon", "x0_snr"):
        return timestep_weights("snr", timesteps, alphas_cumprod)
    if objective == "x0_heuristic":
        return timestep_weights("heuristic", timesteps, alphas_cumprod, settings.get("heuristic_rate", 7.0))
    if objective == "x0_buckets":
        return timestep_weights("learned", timesteps, alphas_cumprod, bucket_weights=settings["bucket_weights"])
    raise ValueError(f"unknown objective {objective!r} in the record")


def scores(data: DrawErrors, weights: np.ndarray) -> np.ndarray:
    """(images, candidates) mean weighted error, `weights` per (image, draw)."""
    return (data.errors * weights[:, None, :]).mean(axis=2)


def accuracy(data: DrawErrors, name: str, heuristic_rate: float = 7.0,
             bucket_weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Per-image correctness (lowest weighted error = prediction) under a weighting."""
    weights = timestep_weights(name, data.timesteps, data.alphas_cumprod, heuristic_rate, bucket_weights)
    return scores(data, weights).argmin(axis=1) == data.labels


# ------------------------------------------------------------------------------------------ records
def schedule_of(source: str) -> np.ndarray:
    """alphas_cumprod of a diffusers checkpoint (`--pretrained` value or folder), float64."""
    from diffusers import DDPMScheduler

    from .checkpoints import locate

    folder, _ = locate(source)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return scheduler.alphas_cumprod.double().numpy()


def load_draw_errors(path: str, alphas_cumprod: Optional[np.ndarray] = None) -> DrawErrors:
    """Unweighted x0 errors of a fixed-budget record with per-draw errors and true labels."""
    from .records import read_records

    record = read_records(path)
    header, images, summary = record["header"], record["images"], record["summary"]
    if header is None or not images:
        raise ValueError(f"{path}: no header or no image lines")
    settings = header.get("settings") or {}
    if settings.get("strategy", "fixed") != "fixed":
        raise ValueError(f"{path}: a {settings.get('strategy')!r} record; the fit needs every candidate's every "
                         "draw (a fixed-budget run)")
    labels = (summary or {}).get("labels")
    if not labels or len(labels) != len(images):
        raise ValueError(f"{path}: no true labels in the summary (was the run finished?)")
    from .records import per_draw_errors

    try:
        tables = [per_draw_errors(image).numpy() for image in images]
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if alphas_cumprod is None:
        alphas_cumprod = schedule_of((header.get("run") or {}).get("pretrained") or header["model"]["source"])
    timesteps = np.array([image["timesteps"] for image in images], dtype=np.int64)
    weighted = np.array(tables, dtype=np.float64)
    errors = weighted / record_weights(settings, timesteps, alphas_cumprod)[:, None, :]
    return DrawErrors(errors, timesteps, np.array(labels, dtype=np.int64), alphas_cumprod)


def load_many(paths: Sequence[str], alphas_cumprod: Optional[np.ndarray] = None) -> DrawErrors:
    """Pool several record files (images of the same candidates and draw count)."""
    data = None
    for path in paths:
        part = load_draw_errors(path, alphas_cumprod)
        alphas_cumprod = part.alphas_cumprod
        data = part if data is None else data.concat(part)
    if data is None:
        raise ValueError("no record files given")
    return data


# ------------------------------------------------------------------------------------------ fitting
def bucket_features(data: DrawErrors, buckets: int = BUCKETS) -> np.ndarray:
    """(images, candidates, buckets): F_kb = (1/N) sum of x0 errors of the draws in bucket b, so that
    sum_b w_b F_kb is exactly the x0_buckets objective's mean weighted error."""
    index = bucket_index(data.timesteps, data.num_train_timesteps, buckets)
    one_hot = np.eye(buckets)[index]  # (images, draws, buckets)
    return np.einsum("ikd,idb->ikb", data.errors, one_hot) / data.errors.shape[2]


def fit_bucket_weights(data: DrawErrors, buckets: int = BUCKETS, ridge: float = 1e-3) -> np.ndarray:
    """Non-negative bucket weights maximising the likelihood of softmax(-score) for the true labels
    (plus `ridge` times the squared weights, features scaled to unit spread); mean weight 1."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    features = bucket_features(data, buckets)
    centred = features - features.mean(axis=1, keepdims=True)  # a per-image shift changes no softmax
    scale = centred.std(axis=(0, 1))
    scale[scale == 0] = 1.0
    x = centred / scale  # (images, candidates, buckets), unit spread per bucket
    rows = np.arange(len(x))

    def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
        logits = -x @ v
        loss = -log_softmax(logits, axis=1)[rows, data.labels].mean() + ridge * v @ v
        p = softmax(logits, axis=1)
        gradient = (x[rows, data.labels] - np.einsum("ik,ikb->ib", p, x)).mean(axis=0) + 2 * ridge * v
        return float(loss), gradient

    fit = minimize(objective, np.full(buckets, 0.1), jac=True, method="L-BFGS-B", bounds=[(0, None)] * buckets)
    weights = fit.x / scale
    return weights / weights.mean() if weights.sum() > 0 else weights


def write_weights(path: str, weights: np.ndarray, info: dict[str, Any]) -> None:
    """JSON with `bucket_weights` (read by `--diffusion_bucket_weights_file`) and how they were fit."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"bucket_weights": [round(float(w), 6) for w in weights], **info}, handle, indent=1)
        handle.write("\n")


def read_bucket_weights(path: str) -> tuple[float, ...]:
    """Bucket weights from a `fit` output (JSON with `bucket_weights`), a JSON list, or numbers
    separated by white space."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except ValueError:
        data = text.split()
    values = data["bucket_weights"] if isinstance(data, dict) else data
    try:
        weights = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: expected bucket weights (a JSON list, {{'bucket_weights': [...]}}, or numbers)")
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"{path}: bucket weights must be finite, non-negative and at least one")
    return weights


# ------------------------------------------------------------------------------------------ CLI
def _fit(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data = load_many(args.records)
    if args.draws:
        data = data.first(args.draws)
    weights = fit_bucket_weights(data, args.buckets, args.ridge)
    train = {name: float(accuracy(data, name, bucket_weights=weights).mean()) for name in WEIGHTINGS}
    write_weights(args.out, weights, {"records": [os.path.abspath(p) for p in args.records], "images": len(data.labels),
                                      "draws": int(data.errors.shape[2]), "ridge": args.ridge,
                                      "held_out_accuracy": train})
    print("bucket weights: " + " ".join(f"{w:.3g}" for w in weights))
    print("accuracy on the held-out records: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in train.items()))
    print(f"-> {args.out} ({time.perf_counter() - started:.1f} s); use with --diffusion_objective x0_buckets "
          f"--diffusion_bucket_weights_file {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report.stats import accuracy_with_interval, mcnemar_exact

    weights = read_bucket_weights(args.weights) if args.weights else None
    names = [n for n in WEIGHTINGS if n != "learned" or weights is not None]
    groups: dict[str, list[str]] = {}
    for path in args.records:
        groups.setdefault(_group_name(path, args.group_by), []).append(path)
    header = "| records | draws | images | " + " | ".join(names) + " | exact McNemar p vs snr |"
    lines = [header, "|---|---:|---:|" + "---:|" * len(names) + "---|"]
    schedule = None
    for group, paths in groups.items():
        data = load_many(paths, schedule)
        schedule = data.alphas_cumprod
        for draws in args.draws or [data.errors.shape[2]]:
            part = data.first(draws)
            correct = {n: accuracy(part, n, args.heuristic_rate, weights) for n in names}
            cells = [accuracy_with_interval(float(correct[n].mean()), len(part.labels)) for n in names]
            tests = ", ".join(f"{n} {mcnemar_exact(correct[n], correct['snr']).p_value:.2g}" for n in names
                              if n != "snr")
            lines.append(f"| {group} | {draws} | {len(part.labels)} | " + " | ".join(cells) + f" | {tests} |")
    print("top-1 accuracy (%, 95% Wilson interval) by weighting of the same recorded x0 errors\n")
    print("\n".join(lines))
    return 0


def _group_name(path: str, group_by: str) -> str:
    """Records are pooled per file, per severity (world-C records name it in their run info), or all."""
    if group_by == "all":
        return "all"
    if group_by == "severity":
        from .records import read_records

        run = (read_records(path)["header"] or {}).get("run") or {}
        return f"severity {run.get('severity', 0)}"
    return os.path.basename(path).replace(".diffusion.jsonl", "")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_benchmark_diffusion.weighting",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit bucket weights on held-out fixed-budget records")
    fit.add_argument("--records", nargs="+", required=True, help="*.diffusion.jsonl of a held-out split")
    fit.add_argument("--out", required=True, help="weights file (JSON) for --diffusion_bucket_weights_file")
    fit.add_argument("--buckets", type=int, default=BUCKETS)
    fit.add_argument("--ridge", type=float, default=1e-3)
    fit.add_argument("--draws", type=int, default=None, help="fit on the first N draws only")
    compare = commands.add_parser("compare", help="accuracy of each weighting on test records")
    compare.add_argument("--records", nargs="+", required=True)
    compare.add_argument("--weights", default=None, help="learned weights file (from `fit`)")
    compare.add_argument("--draws", type=int, nargs="+", default=None, help="also at these draw prefixes")
    compare.add_argument("--group-by", choices=("file", "severity", "all"), default="file")
    compare.add_argument("--heuristic-rate", type=float, default=7.0)
    args = parser.parse_args(argv)
    try:
        return _fit(args) if args.command == "fit" else _compare(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"clip_benchmark_diffusion.weighting: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
