"""The denoising-error math, checked against closed forms."""
import math

import pytest
import torch

from clip_benchmark_diffusion.objectives import (draw_noise, draw_timesteps, elementwise_loss, objective_weight,
                                                 schedule_errors, van_der_corput)
from clip_benchmark_diffusion.schedules import DiscreteSchedule
from clip_benchmark_diffusion.settings import ScorerSettings
from presets import FIXED

T = 1000
ALPHAS = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2, dim=0)


def test_van_der_corput_prefixes_are_stratified():
    values = van_der_corput(torch.arange(16))
    assert values[:4].tolist() == [0.0, 0.5, 0.25, 0.75]
    for n in (2, 4, 8, 16):
        strata = torch.floor(values[:n] * n).long().sort().values
        assert strata.tolist() == list(range(n))  # exactly one value per 1/n stratum


def test_stratified_timesteps_cover_the_restricted_range_evenly():
    settings = ScorerSettings(**FIXED, t_min=100, t_max=699)
    t = draw_timesteps(settings, T, torch.arange(64), image_seed=123)
    assert t.min() >= 100 and t.max() <= 699
    counts = torch.bincount((t - 100) // 150, minlength=4)
    assert counts.tolist() == [16, 16, 16, 16]
    # adding draws keeps the earlier ones (adaptive strategies reuse them)
    assert torch.equal(draw_timesteps(settings, T, torch.arange(32), image_seed=123), t[:32])
    assert not torch.equal(draw_timesteps(settings, T, torch.arange(64), image_seed=124), t)


def test_uniform_timesteps_are_seeded_and_in_range():
    settings = ScorerSettings(**FIXED, timesteps="uniform", t_min=10, t_max=20)
    a = draw_timesteps(settings, T, torch.arange(200), image_seed=5)
    assert torch.equal(a, draw_timesteps(settings, T, torch.arange(200), image_seed=5))
    assert a.min() >= 10 and a.max() <= 20 and len(set(a.tolist())) == 11
    with pytest.raises(ValueError, match="outside the model"):
        draw_timesteps(ScorerSettings(**FIXED, t_max=T), T, torch.arange(2), image_seed=0)


def test_noise_depends_only_on_image_seed_and_draw():
    assert torch.equal(draw_noise(7, 3, (4, 2, 2)), draw_noise(7, 3, (4, 2, 2)))
    assert not torch.equal(draw_noise(7, 3, (4, 2, 2)), draw_noise(7, 4, (4, 2, 2)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_true_model_output_recovers_epsilon_and_x0(prediction_type):
    torch.manual_seed(0)
    x0, eps = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    t = torch.tensor([0, 10, 300, 700, 999])
    a = ALPHAS[t].float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    eps_hat, x0_hat, _ = DiscreteSchedule(ALPHAS, prediction_type).estimates(output, x_t, t)
    assert torch.allclose(eps_hat, eps, atol=1e-4) and torch.allclose(x0_hat, x0, atol=2e-2)
    errors = schedule_errors(DiscreteSchedule(ALPHAS, prediction_type), ScorerSettings(**FIXED), output, x0, eps, x_t,
                             t)
    assert errors.abs().max() < 1e-8


def test_x0_error_with_snr_weight_equals_epsilon_error():
    torch.manual_seed(1)
    x0, eps, guess = torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3)
    t = torch.tensor([1, 50, 200, 500, 800, 990])
    a = ALPHAS[t].float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    schedule = DiscreteSchedule(ALPHAS, "epsilon")
    eps_error = schedule_errors(schedule, ScorerSettings(**FIXED, objective="epsilon"), guess, x0, eps, x_t, t)
    snr_error = schedule_errors(schedule, ScorerSettings(**FIXED, objective="x0_snr"), guess, x0, eps, x_t, t)
    assert torch.allclose(eps_error, snr_error, rtol=1e-3)


def test_weightings():
    t = torch.tensor([0, 250, 500, 999])
    schedule = DiscreteSchedule(ALPHAS, "epsilon")
    heuristic = objective_weight(ScorerSettings(**FIXED, objective="x0_heuristic"), schedule, t)
    assert torch.allclose(heuristic, torch.exp(-7 * t / T).float())
    buckets = objective_weight(ScorerSettings(**FIXED, objective="x0_buckets", bucket_weights=(1.0, 2.0, 3.0, 4.0)),
                               schedule, t)
    assert buckets.tolist() == [1.0, 2.0, 3.0, 4.0]
    snr = objective_weight(ScorerSettings(**FIXED, objective="x0_snr"), schedule, t)
    assert math.isclose(float(snr[1]), float(ALPHAS[250] / (1 - ALPHAS[250])), rel_tol=1e-5)
    assert objective_weight(ScorerSettings(**FIXED), schedule, t).tolist() == [1.0] * 4


def test_losses():
    a, b = torch.zeros(1, 4), torch.tensor([[0.5, -2.0, 1.0, 0.0]])
    assert float(elementwise_loss(a, b, "l2")) == pytest.approx((0.25 + 4 + 1) / 4)
    assert float(elementwise_loss(a, b, "l1")) == pytest.approx(3.5 / 4)
    assert float(elementwise_loss(a, b, "huber")) == pytest.approx((0.125 + 1.5 + 0.5) / 4)


def test_bad_settings_are_rejected_with_a_reason():
    with pytest.raises(ValueError, match="bucket_weights"):
        ScorerSettings(**FIXED, objective="x0_buckets")
    with pytest.raises(ValueError, match="objective must be one of"):
        ScorerSettings(**FIXED, objective="snr")
    with pytest.raises(ValueError, match="t_max"):
        ScorerSettings(**FIXED, t_min=500, t_max=100)
    with pytest.raises(ValueError, match="schedule_draws"):
        ScorerSettings(templates="average_errors", strategy="schedule", schedule_keep=(5, 1), schedule_draws=(50, 20))
