"""`python -m clip_benchmark_diffusion.probes {shape-bias,binding-tasks,robustness} ...`."""
from __future__ import annotations

import argparse
import sys
from typing import Optional


def _parser() -> argparse.ArgumentParser:
    from ..integration.flags import diffusion_argument_parser
    from .cue_conflict import LAYOUTS
    from .robustness import LAYOUTS as ROBUSTNESS_LAYOUTS
    from .run import DEFAULT_OUTPUT

    parser = argparse.ArgumentParser(prog="python -m clip_benchmark_diffusion.probes")
    commands = parser.add_subparsers(dest="command", required=True)

    bias = commands.add_parser("shape-bias", parents=[diffusion_argument_parser()],
                               help="shape bias on cue-conflict images (any CLIP or diffusion model)")
    add = bias.add_argument
    add("--model", required=True, help="open_clip architecture, or sd-diffusion")
    add("--pretrained", required=True, help="open_clip tag / weights file, or diffusers folder / alias")
    add("--dataset-root", "--dataset_root", dest="dataset_root", required=True,
        help="texture-vs-shape checkout (or its stimuli folder), or the world's cue_conflict folder")
    add("--layout", choices=LAYOUTS, default="geirhos", help="geirhos: public stimuli; world: reference world wds")
    add("--output", default=DEFAULT_OUTPUT,
        help=f"result JSON (clip_benchmark's template keys; default {DEFAULT_OUTPUT})")
    add("--model-type", "--model_type", dest="model_type", default="open_clip", help="clip_benchmark model type")
    add("--template", action="append", dest="templates", default=None,
        help="prompt template with {c} (repeatable; default: the layout's own)")
    add("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    add("--num-workers", "--num_workers", dest="num_workers", type=int, default=0)
    add("--device", default=None, help="default: cuda if available, else cpu")
    add("--no-amp", "--no_amp", dest="amp", action="store_false", help="no mixed precision")
    add("--seed", type=int, default=0)
    add("--model-cache-dir", "--model_cache_dir", dest="model_cache_dir", default=None)

    robust = commands.add_parser("robustness", parents=[diffusion_argument_parser()],
                                 help="accuracy per corruption and severity, and mCE, of CLIP and diffusion models")
    add = robust.add_argument
    add("--model", action="append", required=True,
        help="open_clip architecture or sd-diffusion (repeatable; the first model is the mCE baseline)")
    add("--pretrained", action="append", required=True, help="one per --model, in the same order")
    add("--root", required=True, help="world-C task folder, ImageNet-C folder or CIFAR-10-C folder")
    add("--layout", choices=ROBUSTNESS_LAYOUTS, default="auto")
    add("--clean-root", "--clean_root", dest="clean_root", default=None,
        help="the uncorrupted set (world: the task's wds folder; imagenet-c: class folders) for clean accuracy "
             "and relative mCE")
    add("--out", required=True, help="folder for result JSONs, predictions and diffusion records")
    add("--dataset", default=None, help="dataset name in the results (default: <root name>_c)")
    add("--model-type", "--model_type", dest="model_type", default="open_clip")
    add("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    add("--num-workers", "--num_workers", dest="num_workers", type=int, default=0)
    add("--device", default=None)
    add("--no-amp", "--no_amp", dest="amp", action="store_false")
    add("--seed", type=int, default=0)

    tasks = commands.add_parser("binding-tasks", help="write attribute-binding caption-selection wds folders")
    add = tasks.add_argument
    add("--renders", required=True, help="folder of two-object renders (see probes/binding.py for the format)")
    add("--annotations", default=None, help="JSON/CSV of per-image object attributes (default: found in --renders)")
    add("--out", required=True, help="output folder: one wds folder per task plus binding_suite.txt")
    add("--attributes", nargs="+", default=["size", "color", "shape"], choices=["size", "color", "shape"])
    add("--no-controls", dest="controls", action="store_false", help="skip the recognition controls")
    add("--seed", type=int, default=0)
    return parser


def _shape_bias(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError, DiffusionUsageError
    from .run import run_shape_bias

    try:
        run_shape_bias(args.model, args.pretrained, args.dataset_root, layout=args.layout, output=args.output,
                       model_type=args.model_type, device=args.device, batch_size=args.batch_size,
                       num_workers=args.num_workers, amp=args.amp, templates=args.templates, seed=args.seed,
                       cache_dir=args.model_cache_dir, diffusion_options=args)
    except (CheckpointError, DiffusionUsageError, FileNotFoundError) as error:
        print(f"clip_benchmark_diffusion.probes: error: {error}", file=sys.stderr)
        return 2
    return 0


def _binding_tasks(args: argparse.Namespace) -> int:
    from .binding import SUITE_FILE, read_scenes, write_binding_suite

    scenes = read_scenes(args.renders, args.annotations)
    folders = write_binding_suite(scenes, args.out, args.attributes, args.controls, args.seed)
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    print(f"dataset collection: {args.out}/{SUITE_FILE} (evaluate with --task image_caption_selection "
          f"--dataset_root '{args.out}/{{dataset}}')")
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from ..errors import CheckpointError, DiffusionUsageError
    from .robustness import run_robustness, severity_table

    if len(args.model) != len(args.pretrained):
        print("clip_benchmark_diffusion.probes: error: give one --pretrained per --model", file=sys.stderr)
        return 2
    try:
        results = run_robustness(list(zip(args.model, args.pretrained)), args.root, args.out, args.layout,
                                 args.clean_root, args.dataset, model_type=args.model_type, device=args.device,
                                 batch_size=args.batch_size, num_workers=args.num_workers, amp=args.amp,
                                 seed=args.seed, diffusion_options=args)
    except (CheckpointError, DiffusionUsageError, FileNotFoundError, ValueError) as error:
        print(f"clip_benchmark_diffusion.probes: error: {error}", file=sys.stderr)
        return 2
    print(f"\n{results[0]['dataset']}: top-1 accuracy (%) per severity, mean over corruptions\n")
    print(severity_table(results))
    print("\n" + "  ".join(f"{r['model']}: {r['metrics']['seconds']:.0f} s" for r in results))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"shape-bias": _shape_bias, "binding-tasks": _binding_tasks, "robustness": _robustness}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
