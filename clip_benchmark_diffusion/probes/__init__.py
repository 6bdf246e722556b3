"""The paper's probes beyond plain accuracy, for CLIP and diffusion models alike.

* `shape_bias`: the cue-conflict shape-bias metric (pure functions);
* `cue_conflict`: cue-conflict images (public Geirhos stimuli, or the reference world);
* `binding`: attribute-binding caption-selection tasks from two-object CLEVR-style renders;
* `caption_selection`: caption-selection samples as a Dataset and as clip_benchmark wds folders;
* `robustness`: accuracy per corruption and severity and mCE (world-C, ImageNet-C, CIFAR-10-C layouts);
* `run`: a shape-bias run of any clip_benchmark model (`python -m clip_benchmark_diffusion.probes`).

Only `shape_bias` is imported here: it needs no torch.
"""
from .shape_bias import cue_decision, shape_bias_metrics

__all__ = ["cue_decision", "shape_bias_metrics"]
