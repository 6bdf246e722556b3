"""Decide again without a network: replay a strategy on an image's per-draw errors.

The scorer asks a strategy for draw targets round by round and the network fills in the errors
of the open candidates; here those errors come from a table instead (a record's, or a synthetic
one). Same strategy code, same cap rule, same bookkeeping: replaying the settings a record was
made with reproduces its predictions and calls exactly, and replaying other settings says what
they would have predicted and spent, as long as every error they ask for is in the table
(a record keeps every error its run evaluated; a fixed-budget record has all of them).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import MissingErrors  # noqa: F401 (re-exported: its old home)
from .safety import table_draws
from .decisions import ImageScores, image_scores
from .settings import ScorerSettings
from .strategies import ImageState, Strategy, make_strategy, within_cap


def replay(settings: ScorerSettings, per_draw: torch.Tensor, *, timesteps: Optional[torch.Tensor] = None,
           rows_per_candidate: Optional[Sequence[int]] = None, calls_per_prediction: int = 1,
           shortlist: Optional[Sequence[int]] = None, image_key: int = 0,
           strategy: Optional[Strategy] = None) -> ImageScores:
    """What `settings`' strategy decides and spends on one image whose (candidate, draw) errors are
    `per_draw` ((candidates, draws), NaN where unknown; draws beyond its width are unknown).

    `rows_per_candidate`: network rows one draw of each candidate costs (its templates under
    `average_errors`; default 1), times `calls_per_prediction`. `shortlist`: a pre-filter's
    candidates (the others are never scored). `strategy`: a rule to replay instead of the one
    `settings` names (a variant a benchmark prices; it should carry `settings`)."""
    strategy = strategy or make_strategy(settings)
    candidates = per_draw.shape[0]
    max_draws = table_draws(strategy.max_draws(), settings.max_calls, calls_per_prediction)  # as the scorer sizes it
    state = ImageState(candidates, max_draws)
    if shortlist is not None:
        state.restrict(list(shortlist))
    rows = torch.ones(candidates, dtype=torch.int64) if rows_per_candidate is None else \
        torch.as_tensor(rows_per_candidate, dtype=torch.int64)
    table = per_draw.to(torch.float64)
    calls, first_target = 0, 0
    start_calls = int(rows[state.active].sum()) * calls_per_prediction  # one draw of every scored candidate
    while True:
        per_draw_calls = int(rows[state.active].sum()) * calls_per_prediction
        target = within_cap(state, strategy.next_round(state), per_draw_calls, calls, settings.max_calls)
        if target is None:
            break
        first_target = first_target or target
        active = torch.nonzero(state.active).flatten()
        start = state.draws_done
        block = table[active, start:target] if target <= table.shape[1] else None
        if block is None or block.shape[1] < target - start or bool(torch.isnan(block).any()):
            raise MissingErrors(f"the strategy needs draws {start}..{target - 1} of {len(active)} candidates; the "
                                f"table has {table.shape[1]} draws and not all of those")
        state.per_draw[active, start:target] = block
        state.advance(target)
        calls += per_draw_calls * (target - start)
        strategy.finish_round(state)
    if timesteps is None:
        timesteps = torch.zeros(max_draws, dtype=torch.int64)
    return image_scores(image_key, state, timesteps, calls, (start_calls * first_target, start_calls * max_draws))


def replay_record(path: str, changes: Optional[dict] = None) -> dict:
    """Re-decide every image of a record under its settings with `changes` applied (allocation
    settings: strategy, delta, draws, ...), without a model. Returns per-image predictions and
    calls, the recorded ones beside them, and accuracies when the record holds true labels."""
    from .records import per_draw_errors, read_records

    record = read_records(path)
    header, images = record["header"], record["images"]
    if header is None or not images:
        raise ValueError(f"{path}: no header or no image lines")
    settings = ScorerSettings.from_dict(header["settings"]).replace(**(changes or {}))
    candidates = header.get("candidates") or []
    rows = None
    if settings.templates == "average_errors" and candidates:
        rows = [len(prompts) for prompts in candidates]
    per_prediction = int(header.get("calls_per_prediction", 1))
    results = []
    for image in images:
        table = per_draw_errors(image)
        scored = [k for k, n in enumerate(image["draws"]) if n]
        shortlist = scored if settings.prefilter_k and len(scored) < len(image["draws"]) else None
        scores = replay(settings, table, rows_per_candidate=rows, calls_per_prediction=per_prediction,
                        shortlist=shortlist)
        results.append({"image_key": image["image_key"], "prediction": scores.prediction, "calls": scores.calls,
                        "recorded_prediction": image["prediction"], "recorded_calls": image["calls"]})
    labels = (record.get("summary") or {}).get("labels")
    summary = {"images": len(results), "settings": settings.to_dict(),
               "agreement": sum(r["prediction"] == r["recorded_prediction"] for r in results) / len(results),
               "calls_per_image": sum(r["calls"] for r in results) / len(results),
               "recorded_calls_per_image": sum(r["recorded_calls"] for r in results) / len(results)}
    if labels and len(labels) == len(results):
        summary["acc1"] = sum(r["prediction"] == y for r, y in zip(results, labels)) / len(results)
        summary["recorded_acc1"] = sum(r["recorded_prediction"] == y for r, y in zip(results, labels)) / len(results)
    return {"summary": summary, "images": results}


def _setting_value(text: str):
    """A `--set name=value` value: JSON when it parses (numbers, lists, null), else the string."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m clip_benchmark_diffusion replay RECORD [--set name=value ...] [--json OUT]`"""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m clip_benchmark_diffusion replay",
                                     description="Re-decide a record's images under other strategy settings, "
                                                 "without a model: what it would have predicted and spent.")
    parser.add_argument("record", help="a .diffusion.jsonl record")
    parser.add_argument("--set", dest="changes", action="append", default=[], metavar="NAME=VALUE",
                        help="a scorer setting to change, e.g. strategy=ttest, delta=0.001, draws=256 (repeatable)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write per-image results here")
    options = parser.parse_args(argv)
    changes = {}
    for item in options.changes:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes NAME=VALUE, got {item!r}")
        changes[name] = _setting_value(value)
    try:
        result = replay_record(options.record, changes)
    except (OSError, ValueError, TypeError) as error:
        print(f"clip_benchmark_diffusion replay: error: {error}", file=sys.stderr)
        return 2
    summary = result["summary"]
    line = (f"{summary['images']} images: agreement with the record {summary['agreement']:.1%}, calls per image "
            f"{summary['calls_per_image']:,.0f} (recorded {summary['recorded_calls_per_image']:,.0f})")
    if "acc1" in summary:
        line += f", acc1 {summary['acc1']:.2%} (recorded {summary['recorded_acc1']:.2%})"
    print(line)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0
