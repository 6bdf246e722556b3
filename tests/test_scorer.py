"""The batched, shared-draw scorer against a plain loop, and its reproducibility."""
import threading

import pytest
import torch

from clip_benchmark_diffusion.backends.base import Conditioning
from clip_benchmark_diffusion.checkpoints import load_backend
from clip_benchmark_diffusion.objectives import draw_noise, schedule_errors
from clip_benchmark_diffusion.schedules import DiscreteSchedule
from clip_benchmark_diffusion.scorer import DiffusionScorer
from clip_benchmark_diffusion.settings import ScorerSettings
from fake_backend import FakeBackend
from presets import FIXED

CANDIDATES = [["a photo of a cat.", "a cat."], ["a photo of a dog.", "a dog."], ["a photo of a bird.", "a bird."]]


def pixels(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def plain_loop_errors(backend, settings, image, key, candidates, timesteps):
    """Reference: one UNet call per (prompt, draw), no batching, no caches."""
    from diffusers import DDPMScheduler

    scorer = DiffusionScorer(backend, settings)
    scheduler = DDPMScheduler.from_pretrained(backend.description["source"], subfolder="scheduler")
    schedule = DiscreteSchedule(scheduler.alphas_cumprod, scheduler.config.prediction_type)
    x0 = backend.encode_images(image[None])
    errors = torch.zeros(len(candidates), len(timesteps), dtype=torch.float64)
    for c, prompts in enumerate(candidates):
        for j, t in enumerate(timesteps):
            per_prompt = []
            for prompt in prompts:
                noise = draw_noise(scorer.image_seed(key), j, tuple(x0.shape[1:]))[None]
                t_batch = t.view(1)
                x_t = scheduler.add_noise(x0, noise, t_batch)
                output = backend.predict(x_t, t_batch, backend.encode_prompts([prompt]))
                per_prompt.append(float(schedule_errors(schedule, settings, output, x0, noise, x_t, t_batch)))
            errors[c, j] = sum(per_prompt) / len(per_prompt)
    return errors


@pytest.fixture(scope="module")
def epsilon_backend(tiny_epsilon_pipeline):
    return load_backend(tiny_epsilon_pipeline)


@pytest.fixture(scope="module")
def v_backend(tiny_v_pipeline):
    return load_backend(tiny_v_pipeline)


@pytest.mark.parametrize("objective", ["epsilon", "x0_heuristic"])
def test_batched_scorer_equals_plain_loop(epsilon_backend, objective):
    settings = ScorerSettings(**FIXED, draws=6, batch_size=5, objective=objective, t_min=50, t_max=900)
    images = pixels(2)
    results = DiffusionScorer(epsilon_backend, settings).score(images, CANDIDATES, image_keys=[11, 12])
    for image, key, result in zip(images, [11, 12], results):
        expected = plain_loop_errors(epsilon_backend, settings, image, key, CANDIDATES, result.timesteps)
        assert torch.allclose(result.per_draw, expected, rtol=1e-4, atol=1e-6)
        assert torch.allclose(result.errors, expected.mean(dim=1), rtol=1e-4)
        assert result.calls == 6 * 6  # 3 candidates x 2 templates x 6 draws
        assert result.draws.tolist() == [6, 6, 6]


def test_v_prediction_checkpoint_is_scored_in_epsilon_space(v_backend):
    assert v_backend.noise_process.prediction_type == "v_prediction"
    settings = ScorerSettings(**FIXED, draws=4, batch_size=7)
    result = DiffusionScorer(v_backend, settings).score(pixels(1), CANDIDATES[:2], image_keys=[3])[0]
    expected = plain_loop_errors(v_backend, settings, pixels(1)[0], 3, CANDIDATES[:2], result.timesteps)
    assert torch.allclose(result.per_draw, expected, rtol=1e-4, atol=1e-6)


def test_same_seed_same_scores_for_any_batch_size_and_class_order(epsilon_backend):
    images = pixels(3, seed=4)
    base = DiffusionScorer(epsilon_backend, ScorerSettings(**FIXED, draws=4, batch_size=64, seed=9)).score(images, CANDIDATES)
    small = DiffusionScorer(epsilon_backend, ScorerSettings(**FIXED, draws=4, batch_size=3, seed=9))
    one_by_one = [small.score(images[i:i + 1], CANDIDATES)[0] for i in range(3)]
    order = [2, 0, 1]
    shuffled = DiffusionScorer(epsilon_backend, ScorerSettings(**FIXED, draws=4, batch_size=5, seed=9)).score(
        images, [CANDIDATES[i] for i in order])
    for a, b, c in zip(base, one_by_one, shuffled):
        assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.timesteps, c.timesteps)
        assert torch.allclose(a.per_draw, b.per_draw, rtol=1e-5, atol=1e-7)
        assert torch.allclose(a.per_draw[order], c.per_draw, rtol=1e-5, atol=1e-7)
        assert a.prediction == b.prediction == order[c.prediction]
    other_seed = DiffusionScorer(epsilon_backend, ScorerSettings(**FIXED, draws=4, seed=10)).score(images, CANDIDATES)
    assert not torch.equal(other_seed[0].timesteps, base[0].timesteps)


def test_prompts_are_encoded_once_and_template_modes_cost_what_they_say():
    backend = FakeBackend(spread=0.5)
    calls = []
    encode = backend.encode_prompts
    backend.encode_prompts = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    scorer = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=4))
    first = scorer.score(pixels(2, size=8), CANDIDATES)
    scorer.score(pixels(2, seed=1, size=8), CANDIDATES)
    assert sum(len(c) for c in calls) == 6  # six distinct prompts, encoded once in total
    assert first[0].calls == 3 * 2 * 4
    cheap_scorer = DiffusionScorer(backend, ScorerSettings(strategy="fixed", draws=4, templates="average_embeddings"))
    cheap = cheap_scorer.score(pixels(2, size=8), CANDIDATES)
    assert cheap[0].calls == 3 * 4
    # only the 3 means are held, not the 6 prompts' states (1000 x 80 SD 2 states would be ~12 GB)
    assert len(cheap_scorer.conditionings.means) == 3 and not cheap_scorer.conditionings.prompts
    # the cheap mode really conditions on the mean embedding
    mean_cond = (encode(["a photo of a cat."]).states + encode(["a cat."]).states) / 2
    single = FakeBackend(spread=0.5)
    single.encode_prompts = lambda prompts: Conditioning(states=mean_cond.expand(len(prompts), -1))
    reference = DiffusionScorer(single, ScorerSettings(**FIXED, draws=4)).score(pixels(2, size=8), [["x"]])
    assert torch.allclose(cheap[0].per_draw[0], reference[0].per_draw[0])


def test_network_batches_stay_within_batch_size_for_imagenet_scale_templates():
    """1000 classes x 80 templates: every UNet call (and the conditioning it is sent) has at
    most `batch_size` rows, so device memory does not grow with the number of prompts."""
    backend = FakeBackend(spread=0.5)
    candidates = [[f"template {t} of class {c}." for t in range(80)] for c in range(1000)]
    result = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=1, batch_size=48)).score(pixels(1, size=8), candidates)[0]
    assert backend.predict_rows == 80_000 and result.calls == 80_000
    assert backend.largest_predict == 48
    # the prediction is the class whose templates' mean error is lowest, over all 80,000 rows
    assert result.prediction == int(torch.argmin(result.errors)) and result.errors.shape == (1000,)


def test_empty_candidates_are_rejected():
    scorer = DiffusionScorer(FakeBackend(), ScorerSettings(**FIXED, draws=2))
    with pytest.raises(ValueError, match="no candidates"):
        scorer.score(pixels(1, size=8), [])
    with pytest.raises(ValueError, match="at least one prompt"):
        scorer.score(pixels(1, size=8), [["a"], []])


class ConditioningBackend(FakeBackend):
    """A fake backend whose conditionings have several fields (float16 states, pooled, class ids),
    as the real families' do; every row's prediction depends on all of them."""

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, :2].to(torch.float32)

    def encode_prompts(self, prompts):
        from fake_backend import _prompt_value

        values = torch.tensor([_prompt_value(p) for p in prompts], dtype=torch.float32)
        states = (values.view(-1, 1, 1) * torch.arange(1.0, 13.0).view(1, 3, 4)).to(torch.float16)
        return Conditioning(states=states, pooled=values.view(-1, 1) * torch.ones(1, 5),
                            class_ids=(values * 100).to(torch.int64))

    def predict(self, x_t, timesteps, conditioning):
        self.predict_rows += len(x_t)
        per_row = (conditioning.states.float().mean(dim=(1, 2)) + conditioning.pooled.sum(dim=1)
                   + conditioning.class_ids.float() / 7)
        return x_t * 0.5 + per_row.view(-1, 1, 1, 1)


@pytest.mark.parametrize("table_bytes", [2**30, 0])  # the candidates' conditionings in one table, or per pass
def test_shared_noise_and_conditioning_rows_give_bit_identical_errors_to_a_per_row_loop(monkeypatch,
                                                                                       table_bytes):
    """Noises generated once per (image, draw) and conditionings copied once per run or per
    pass, then indexed, give exactly the errors of computing every row on its own."""
    import clip_benchmark_diffusion.conditionings as conditionings_module
    import clip_benchmark_diffusion.passes as passes_module

    monkeypatch.setattr(conditionings_module, "CONDITIONING_TABLE_BYTES", table_bytes)
    backend = ConditioningBackend()
    settings = ScorerSettings(**FIXED, draws=5, batch_size=16, objective="x0_heuristic")  # passes straddle draws
    generated, moved, threads = [], [], set()
    monkeypatch.setattr(passes_module, "draw_noise", lambda *a: generated.append(a[:2]) or
                        threads.add(threading.current_thread().name) or draw_noise(*a))
    to_device = passes_module.rows_to_device
    monkeypatch.setattr(passes_module, "rows_to_device", lambda rows, device: moved.append(len(rows)) or
                        to_device(rows, device))
    scorer = DiffusionScorer(backend, settings)
    images, keys = pixels(2, size=4), [5, 6]
    results = scorer.score(images, CANDIDATES, image_keys=keys)
    assert sorted(generated) == sorted({(scorer.image_seed(k), j) for k in keys for j in range(5)})  # once each
    # made ahead on the noise thread, not on the scoring thread
    assert len(threads) == 1 and threads.pop().startswith("diffusion-noise")
    assert moved and max(moved) <= 6  # a pass's distinct noises or conditionings, not one copy per row (16)
    for expected, result in zip(per_row_loop_errors(scorer, backend, images, keys, CANDIDATES, results, 5), results):
        assert torch.equal(result.per_draw, expected)


def per_row_loop_errors(scorer, backend, images, keys, candidates, results, draws):
    """Reference: every (candidate, prompt, draw) row computed on its own, a candidate's error
    at a draw the mean of its prompts' as sum / len."""
    x0 = backend.encode_images(images)
    schedule, settings = scorer.schedule, scorer.settings
    per_image = []
    for i, (key, result) in enumerate(zip(keys, results)):
        expected = torch.zeros(len(candidates), draws, dtype=torch.float64)
        for c, prompts in enumerate(candidates):
            for j in range(draws):
                noise = draw_noise(scorer.image_seed(key), j, tuple(x0.shape[1:]))[None]
                t = result.timesteps[j].view(1)
                x_t = schedule.add_noise(x0[i:i + 1], noise, t)
                row_errors = [float(schedule_errors(schedule, settings,
                                                    backend.predict(x_t, schedule.network_time(t),
                                                                    backend.encode_prompts([p])),
                                                    x0[i:i + 1], noise, x_t, t).to(torch.float64))
                              for p in prompts]
                expected[c, j] = sum(row_errors) / len(row_errors)
        per_image.append(expected)
    return per_image


class HalfOutputBackend(ConditioningBackend):
    """Returns float16 outputs, as a real UNet does (the scorer converts them in a reused buffer)."""

    def predict(self, x_t, timesteps, conditioning):
        return super().predict(x_t, timesteps, conditioning).half()


UNEVEN = [["a photo of a cat.", "a cat.", "cat"], ["a photo of a dog."], ["a photo of a bird.", "a bird."]]


@pytest.mark.parametrize("objective,loss", [("epsilon", "l2"), ("velocity", "l1"), ("x0_snr", "huber")])
def test_float16_outputs_and_uneven_templates_give_bit_identical_errors_to_a_per_row_loop(objective, loss):
    """Errors computed in reused buffers from float16 outputs, and candidates averaging different
    numbers of templates (summed template by template for all candidates at once), are the
    per-row loop's bit for bit."""
    backend = HalfOutputBackend()
    scorer = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=4, batch_size=7, objective=objective, loss=loss))
    images, keys = pixels(2, size=4), [3, 4]
    results = scorer.score(images, UNEVEN, image_keys=keys)
    for expected, result in zip(per_row_loop_errors(scorer, backend, images, keys, UNEVEN, results, 4), results):
        assert torch.equal(result.per_draw, expected)


class HalfNetworkBackend(HalfOutputBackend):
    """A float16 network: it casts what it receives to float16 (as the real backends do) and
    notes the dtype it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.dtype = torch.float16
        self.received: set = set()

    def predict(self, x_t, timesteps, conditioning):
        self.received.add(x_t.dtype)
        return super().predict(x_t.to(self.dtype).float(), timesteps, conditioning)


@pytest.mark.parametrize("objective", ["epsilon", "x0_heuristic"])
def test_a_half_precision_network_gets_its_rows_in_its_dtype_with_the_per_row_loops_errors(objective):
    """The scorer casts each draw's x_t to the network's dtype before gathering its rows (not each
    row inside the backend), and an objective that needs x_t still reads the float32 one: the
    errors are the per-row loop's (which hands the backend float32 x_t) bit for bit."""
    backend = HalfNetworkBackend()
    scorer = DiffusionScorer(backend, ScorerSettings(**FIXED, draws=4, batch_size=7, objective=objective))
    images, keys = pixels(2, size=4), [3, 4]
    results = scorer.score(images, UNEVEN, image_keys=keys)
    assert backend.received == {torch.float16}
    for expected, result in zip(per_row_loop_errors(scorer, backend, images, keys, UNEVEN, results, 4), results):
        assert torch.equal(result.per_draw, expected)


def test_the_candidates_go_to_the_device_once_per_run(monkeypatch):
    """`prepare` puts the candidates' conditionings on the device once; later batches scored
    against the same candidates gather rows from that table (new candidates get a new one)."""
    stacked = []
    stack = Conditioning.stack
    monkeypatch.setattr(Conditioning, "stack", staticmethod(lambda rows, *a, **k: stacked.append(len(rows)) or
                                                            stack(rows, *a, **k)))
    settings = ScorerSettings(**FIXED, draws=3, batch_size=8)
    scorer = DiffusionScorer(ConditioningBackend(), settings)
    scorer.prepare(CANDIDATES)
    assert stacked == [6]
    first = scorer.score(pixels(2, size=4), CANDIDATES, image_keys=[1, 2])
    scorer.score(pixels(2, seed=3, size=4), CANDIDATES, image_keys=[3, 4])
    assert stacked == [6]
    scorer.score(pixels(1, size=4), CANDIDATES[:2], image_keys=[1])
    assert stacked == [6, 4]
    fresh = DiffusionScorer(ConditioningBackend(), settings).score(pixels(2, size=4), CANDIDATES, image_keys=[1, 2])
    assert all(torch.equal(a.per_draw, b.per_draw) for a, b in zip(first, fresh))
