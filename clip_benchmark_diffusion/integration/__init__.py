"""Everything that touches clip_benchmark, kept apart from the scorer (which knows no host).

* `flags`: the `--diffusion_*` flags and parsed options -> `ScorerSettings` (under a protocol);
* `run`: the one typed object a run's wrappers share (`current()`), built before the model loads;
* `patches`: the wrappers of clip_benchmark's functions, and undoing them if the host changed;
* `outputs`: output, record and predictions file names;
* `adapter`: the scorer dressed as clip_benchmark's `(model, transform, tokenizer)`;
* `rank_codec`: rankings through clip_benchmark's arithmetic; `ranks`: one dataset over many processes.

`registration.py` is the short public entry point the start-up hook calls. Importing this package
imports nothing.
"""
