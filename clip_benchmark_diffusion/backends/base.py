"""The small interface every diffusion model family implements.

The scorer only needs a few things from a model: encode images once, encode prompts once into
a `Conditioning`, predict from a noisy sample and a batch of conditionings, and the family's noise
process (a `schedules.NoiseSchedule`, which also turns outputs into errors). A family is one
subclass in its own module, registered by pipeline class name in `backends/__init__.py` (imported
only when a checkpoint of that family is loaded). It lists the checkpoint parts it needs, builds
itself with `from_pretrained`, and runs its denoiser through `speed.run_denoiser` so the speed
switches work the same for every family.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from PIL import Image
from torchvision import transforms

from ..safety import to_rgb
from ..schedules import NoiseSchedule, sigma_distribution_problem
from ..settings import ScorerSettings


@dataclass
class Conditioning:
    """A batch of conditioning rows: whatever the family's denoiser takes besides x_t and t.

    Every present field has the batch as its first dimension. Encoded prompts live on the CPU;
    the scorer stacks a pass's rows and the backend moves them (`to`) to its device.
    """

    #: (B, L, D) text states for cross-/joint attention
    states: Optional[torch.Tensor] = None
    #: (B, D) pooled text embedding (SDXL, SD3, FLUX)
    pooled: Optional[torch.Tensor] = None
    #: (B, 6) SDXL micro-conditioning (original size, crop, target size)
    time_ids: Optional[torch.Tensor] = None
    #: (B, L) attention mask of `states` (PixArt, IF; Qwen-Image and others whose states are as
    #: long as each prompt: rows of different lengths are zero-padded when stacked)
    mask: Optional[torch.Tensor] = None
    #: (B, L, 3) FLUX text position ids
    text_ids: Optional[torch.Tensor] = None
    #: (B,) class labels of a class-conditional model (DiT)
    class_ids: Optional[torch.Tensor] = None
    #: (B, K, L, D) states of K hidden layers of one text encoder (HiDream's Llama)
    layers: Optional[torch.Tensor] = None
    #: (B, L2, D2) states of a second text encoder and (B, L2) their mask (HunyuanImage's ByT5 glyph text)
    glyph_states: Optional[torch.Tensor] = None
    glyph_mask: Optional[torch.Tensor] = None

    def fields(self) -> dict[str, torch.Tensor]:
        """The present (non-None) fields by name."""
        return {name: value for name, value in vars(self).items() if value is not None}  # fields, in order

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "Conditioning":
        """The same conditioning with `function` applied to every present field."""
        return Conditioning(**{name: function(value) for name, value in self.fields().items()})

    def __getitem__(self, index: Any) -> "Conditioning":
        """Rows `index` (a slice or index tensor) of every field."""
        return self.map(lambda v: v[index])

    def __len__(self) -> int:
        return len(next(iter(self.fields().values())))

    @property
    def nbytes(self) -> int:
        """Bytes the present fields hold (what a table of such rows costs on the device)."""
        return sum(value.numel() * value.element_size() for value in self.fields().values())

    def to(self, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> "Conditioning":
        """On `device`; floating fields also in `dtype` (ids and masks keep theirs)."""
        return self.map(lambda v: v.to(device, dtype) if dtype is not None and v.is_floating_point()
                        else v.to(device))

    def rows(self) -> list["Conditioning"]:
        """One conditioning per batch row (without the batch dimension)."""
        fields = self.fields()
        return [Conditioning(**{name: value[i] for name, value in fields.items()}) for i in range(len(self))]

    @staticmethod
    def stack(rows: Sequence["Conditioning"], pin_memory: bool = False) -> "Conditioning":
        """A batch from rows of `rows()` (a pass's rows, gathered from the prompt cache), in pinned
        memory when asked (it then goes to CUDA without a second copy)."""
        names = rows[0].fields()
        return Conditioning(**{name: _stack([getattr(row, name) for row in rows], pin_memory) for name in names})

    @staticmethod
    def mean(rows: Sequence["Conditioning"]) -> "Conditioning":
        """One row standing for several (`templates=average_embeddings`): floating fields are
        averaged, masks united; ids must agree (a class label cannot be averaged)."""
        stacked = Conditioning.stack(rows)
        merged = {}
        for name, value in stacked.fields().items():
            if value.is_floating_point():
                merged[name] = value.mean(dim=0)
            elif name.endswith("mask"):
                merged[name] = value.amax(dim=0)
            else:
                if not bool((value == value[:1]).all()):
                    raise ValueError(f"cannot average conditionings whose {name} differ")
                merged[name] = value[0]
        return Conditioning(**merged)


def _stack(values: list, pin_memory: bool) -> torch.Tensor:
    """Rows stacked; rows of different lengths (families whose text states are as long as each
    prompt, with a mask) are zero-padded at the end to the longest, which their masks exclude."""
    shape = values[0].shape
    if any(value.shape != shape for value in values):
        shape = tuple(max(sizes) for sizes in zip(*(value.shape for value in values)))
        out = torch.zeros((len(values), *shape), dtype=values[0].dtype, pin_memory=pin_memory)
        for row, value in zip(out, values):
            row[tuple(slice(0, size) for size in value.shape)] = value
        return out
    if not pin_memory:
        return torch.stack(values)
    out = torch.empty((len(values), *values[0].shape), dtype=values[0].dtype, pin_memory=True)
    return torch.stack(values, out=out)


@dataclass(frozen=True)
class LoadSettings:
    """The settings a backend is built with (the load layer); every other setting is the scorer's.
    The dtype is resolved by `checkpoints` and passed beside these."""

    #: pixel size images are scored at (None = the model's own)
    resolution: Optional[int] = None
    #: leave the T5 encoder out (SD3/SD3.5)
    drop_t5: bool = False
    #: the guidance-embedding input of guidance-distilled models (FLUX.1-dev, FLUX.2, ...)
    guidance: float = 1.0

    @classmethod
    def of(cls, settings: ScorerSettings) -> "LoadSettings":
        """The load layer of a run's settings."""
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})


class DiffusionBackend(ABC):
    """A conditional denoiser, seen as a likelihood proxy for prompts."""

    #: checkpoint subfolders it needs (also what is downloaded from the hub)
    parts: ClassVar[tuple[str, ...]] = ()
    #: rectified-flow family (sigma distributions apply)
    flow_matching: ClassVar[bool] = False
    #: the T5 encoder may be left out (`drop_t5`)
    t5_optional: ClassVar[bool] = False
    #: pixel size the model was trained at (the transform resizes/crops to it)
    resolution: int
    device: torch.device
    dtype: torch.dtype
    #: a short description recorded with every run
    description: dict
    #: the model's own noise process; a scorer derives the schedule it draws on from it and its own
    #: settings (`NoiseSchedule.for_settings`)
    noise_process: NoiseSchedule

    # ---------------------------------------------------------------- checkpoint
    @classmethod
    def required_parts(cls, index: dict, load: Optional[LoadSettings] = None) -> tuple[str, ...]:
        """Subfolders to fetch and check for this checkpoint (its `model_index.json`) and load settings."""
        return cls.parts

    @classmethod
    def settings_problem(cls, settings: ScorerSettings) -> Optional[str]:
        """Why these settings cannot be used with this family (None if they can), checked before
        anything is loaded."""
        problem = sigma_distribution_problem(settings, cls.flow_matching)
        if problem:
            return problem
        if settings.drop_t5 and not cls.t5_optional:
            return "--diffusion_no_t5 applies to SD3/SD3.5 only (this model has no T5, or cannot run without it)"
        return None

    @classmethod
    def auto_dtype(cls, device: torch.device) -> torch.dtype:
        """What `--diffusion_dtype auto` means for this family: float16 on CUDA, float32 on CPU."""
        return torch.float16 if device.type == "cuda" else torch.float32

    @classmethod
    def from_pretrained(cls, source: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        local_files_only: bool = False, cache_dir: Optional[str] = None, speed: Any = None,
                        load: Optional[LoadSettings] = None) -> "DiffusionBackend":
        """Load the family's parts from a diffusers folder or hub id."""
        from .speed import SpeedOptions

        return cls(source, device=device, dtype=dtype, local_files_only=local_files_only, cache_dir=cache_dir,
                   speed=speed or SpeedOptions(), load=load or LoadSettings())

    # ---------------------------------------------------------------- the model
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> tensor in [-1, 1] at `resolution` (resize the short side, centre crop)."""
        return transforms.Compose([
            transforms.Lambda(to_rgb),  # 16-bit images scaled, not clipped to white
            transforms.Resize(self.resolution, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # [0, 1] -> [-1, 1], the VAE's range
        ])

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel batch (from `image_transform`) -> clean model-space samples x0 (float32)."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Prompts -> a batch of conditionings (one row per prompt), kept on CPU so a cache of
        many prompts never occupies accelerator memory."""

    @abstractmethod
    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """Model output for a batch, in the schedule's parameterisation, mean channels only.
        `timesteps` are what the schedule's `network_time` gives (t, or sigma for flow)."""

    @property
    def calls_per_prediction(self) -> int:
        """Network evaluations one `predict` row costs (1 for a plain denoiser)."""
        return 1
