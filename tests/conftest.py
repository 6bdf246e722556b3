"""Shared fixtures: offline mode, tiny diffusers pipelines and a tiny wds dataset."""
from __future__ import annotations

import os
import sys
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# weight-file hashes are cached per user; the tests keep theirs to themselves
os.environ["CLIP_BENCHMARK_DIFFUSION_CACHE"] = tempfile.mkdtemp(prefix="cbd-hash-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

from tiny_sd import build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_epsilon_pipeline(tmp_path_factory) -> str:
    return build_tiny_pipeline(str(tmp_path_factory.mktemp("pipelines") / "tiny-eps"), "epsilon")


@pytest.fixture(scope="session")
def tiny_v_pipeline(tmp_path_factory) -> str:
    return build_tiny_pipeline(str(tmp_path_factory.mktemp("pipelines") / "tiny-v"), "v_prediction")


def write_wds_dataset(root: str, classnames: list[str], templates: list[str], num_images: int, seed: int = 0,
                      size: tuple[int, int] = (20, 24)) -> str:
    """A clip_benchmark `wds/` classification dataset of random images."""
    import numpy as np
    import webdataset as wds
    from PIL import Image

    os.makedirs(os.path.join(root, "test"), exist_ok=True)
    rng = np.random.default_rng(seed)
    with wds.TarWriter(os.path.join(root, "test", "0.tar")) as writer:
        for i in range(num_images):
            pixels = (rng.random((*size, 3)) * 255).astype("uint8")
            writer.write({"__key__": f"s{i:05d}", "png": Image.fromarray(pixels), "cls": i % len(classnames)})
    with open(os.path.join(root, "test", "nshards.txt"), "w") as handle:
        handle.write("1")
    with open(os.path.join(root, "classnames.txt"), "w") as handle:
        handle.write("\n".join(classnames) + "\n")
    with open(os.path.join(root, "zeroshot_classification_templates.txt"), "w") as handle:
        handle.write("\n".join(templates) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_wds(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("wds") / "animals")
    return write_wds_dataset(root, ["cat", "dog", "bird"], ["a photo of a {c}.", "a {c}."], num_images=6)
