"""Speed switches change how the denoiser runs, never the scores (beyond float rounding)."""
import pytest
import torch

from clip_benchmark_diffusion.backends.speed import SpeedOptions, padded_size, run_denoiser
from clip_benchmark_diffusion.checkpoints import load_backend
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from presets import FIXED

CANDIDATES = [["a photo of a cat."], ["a photo of a dog."], ["a photo of a bird."]]


def pixels(n: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1


def test_compiled_calls_are_chunked_padded_to_a_power_of_two_and_cut_back():
    seen = []

    def denoise(sample, timesteps, context):
        seen.append((len(sample), len(timesteps), len(context)))
        return sample * 2 + timesteps.view(-1, 1, 1, 1) + context.view(len(context), -1)[:, :1, None, None]

    sample, timesteps, context = torch.randn(11, 4, 2, 2), torch.arange(11.0), torch.randn(11, 7, 8)
    expected = denoise(sample, timesteps, context)
    seen.clear()
    output = run_denoiser(denoise, sample, timesteps, context, SpeedOptions(compile_mode="default", static_batch=8))
    assert seen == [(8, 8, 8), (4, 4, 4)] and torch.equal(output, expected)  # 11 rows = 8 + 3 padded to 4
    seen.clear()
    run_denoiser(denoise, sample, timesteps, context, SpeedOptions(static_batch=8))  # eager: as it comes
    assert seen == [(11, 11, 11)]
    # one timestep for the whole batch is broadcast
    compiled = SpeedOptions(compile_mode="default", static_batch=8)
    single = run_denoiser(denoise, sample[:3], torch.tensor(5.0), context[:3], compiled)
    torch.testing.assert_close(single, denoise(sample[:3], torch.full((3,), 5.0), context[:3]))
    assert [padded_size(n, 64) for n in (1, 2, 3, 33, 64)] == [1, 2, 4, 64, 64] and padded_size(5, 0) == 5
    with pytest.raises(ValueError, match="compile mode"):
        SpeedOptions(compile_mode="fast")


@pytest.mark.parametrize("speed", [SpeedOptions(channels_last=True),
                                   SpeedOptions(compile_mode="default", static_batch=16)],
                         ids=["channels_last", "torch.compile"])
def test_speed_switches_give_the_same_scores(tiny_epsilon_pipeline, speed):
    settings = ScorerSettings(**FIXED, draws=6, batch_size=16, seed=2)
    plain = DiffusionScorer(load_backend(tiny_epsilon_pipeline), settings).score(pixels(2), CANDIDATES)
    backend = load_backend(tiny_epsilon_pipeline, speed=speed)
    assert backend.description["channels_last"] == speed.channels_last
    assert backend.description["compile"] == speed.compile_mode
    fast = DiffusionScorer(backend, settings).score(pixels(2), CANDIDATES)
    for a, b in zip(plain, fast):
        torch.testing.assert_close(a.per_draw, b.per_draw, rtol=1e-4, atol=1e-6)
        assert a.prediction == b.prediction
