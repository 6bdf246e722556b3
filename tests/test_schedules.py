"""Noise processes and structured conditioning, checked against closed forms and diffusers' own tables."""
import pytest
import torch

from clip_benchmark_diffusion.backends.base import Conditioning
from clip_benchmark_diffusion.objectives import schedule_errors
from clip_benchmark_diffusion.schedules import DiscreteSchedule, FlowSchedule
from clip_benchmark_diffusion.settings import ScorerSettings
from presets import FIXED

ALPHAS = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, dim=0)
T = torch.tensor([0, 100, 400, 700, 999])


def flow_draw(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x0, eps, v_hat = (torch.randn(5, 4, 3, 3, generator=generator) for _ in range(3))
    schedule = FlowSchedule(shift=3.0)
    return schedule, x0, eps, v_hat, schedule.add_noise(x0, eps, T)


def test_flow_noising_and_a_perfect_velocity_give_zero_error_in_every_objective():
    schedule, x0, eps, _, x_t = flow_draw()
    sigma = schedule.sigmas(T).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    for objective in ("epsilon", "velocity", "x0_snr", "x0_heuristic"):
        errors = schedule_errors(schedule, ScorerSettings(**FIXED, objective=objective), eps - x0, x0, eps, x_t, T)
        assert errors.abs().max() < 1e-5, objective


def test_flow_error_spaces_are_the_velocity_error_times_sigma_factors():
    schedule, x0, eps, v_hat, x_t = flow_draw(1)
    sigma = schedule.sigmas(T).float()
    v_error = schedule_errors(schedule, ScorerSettings(**FIXED, objective="velocity"), v_hat, x0, eps, x_t, T)
    torch.testing.assert_close(v_error, (v_hat - (eps - x0)).pow(2).flatten(1).mean(1))
    eps_error = schedule_errors(schedule, ScorerSettings(**FIXED, objective="epsilon"), v_hat, x0, eps, x_t, T)
    torch.testing.assert_close(eps_error, (1 - sigma) ** 2 * v_error, rtol=1e-4, atol=1e-6)
    snr_error = schedule_errors(schedule, ScorerSettings(**FIXED, objective="x0_snr"), v_hat, x0, eps, x_t, T)
    # SNR-weighted x0 error = epsilon error, on flow exactly as on DDPM
    torch.testing.assert_close(snr_error, eps_error, rtol=1e-3, atol=1e-6)
    heuristic = schedule_errors(schedule, ScorerSettings(**FIXED, objective="x0_heuristic"), v_hat, x0, eps, x_t, T)
    torch.testing.assert_close(heuristic, torch.exp(-7 * sigma) * sigma ** 2 * v_error, rtol=1e-4, atol=1e-6)


def test_model_sigmas_are_the_flow_schedulers_own_training_table():
    from diffusers import FlowMatchEulerDiscreteScheduler

    table = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = FlowSchedule(shift=3.0).sigmas(torch.arange(1000))
    torch.testing.assert_close(ours.float(), table.sigmas[:1000].flip(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close((ours * 1000).float(), table.timesteps.flip(0))
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    u = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    torch.testing.assert_close(FlowSchedule(mu=0.8).sigmas(torch.arange(1000)), dynamic.time_shift(0.8, 1.0, u))


def test_sigma_distributions():
    t = torch.arange(1000)
    uniform = FlowSchedule(shift=3.0, distribution="uniform").sigmas(t)
    torch.testing.assert_close(uniform, (t + 1).double() / 1000)
    logit = FlowSchedule(distribution="logit_normal", logit_mean=0.5, logit_std=1.2).sigmas(t)
    assert bool((logit > 0).all() and (logit < 1).all() and (logit.diff() > 0).all())
    assert float(logit[499:501].mean()) == pytest.approx(float(torch.sigmoid(torch.tensor(0.5))), abs=2e-3)
    with pytest.raises(ValueError, match="flow-matching models only"):
        DiscreteSchedule(ALPHAS, "epsilon").check(ScorerSettings(**FIXED, sigma_distribution="uniform"))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_velocity_objective_on_ddpm_compares_eps_minus_x0(prediction_type):
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(5, 4, 3, 3, generator=generator), torch.randn(5, 4, 3, 3, generator=generator)
    schedule = DiscreteSchedule(ALPHAS, prediction_type)
    x_t = schedule.add_noise(x0, eps, T)
    a = ALPHAS[T].float().view(-1, 1, 1, 1)
    perfect = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    eps_hat, x0_hat, v_hat = schedule.estimates(perfect, x_t, T)
    torch.testing.assert_close(v_hat, eps - x0, rtol=1e-3, atol=2e-2)
    wrong = schedule_errors(schedule, ScorerSettings(**FIXED, objective="velocity"), perfect + 0.1, x0, eps, x_t, T)
    assert bool((wrong > 0).all())


def test_conditioning_rows_stack_mean_and_device_moves():
    batch = Conditioning(states=torch.randn(3, 5, 4), mask=torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                                          [1, 0, 0, 0, 0]]),
                         class_ids=torch.tensor([7, 7, 8]))
    rows = batch.rows()
    assert len(rows) == 3 and rows[0].states.shape == (5, 4)
    again = Conditioning.stack(rows)
    assert torch.equal(again.states, batch.states) and torch.equal(again.class_ids, batch.class_ids)
    mean = Conditioning.mean(rows[:2])
    torch.testing.assert_close(mean.states, batch.states[:2].mean(0))
    assert mean.mask.tolist() == [1, 1, 1, 0, 0] and int(mean.class_ids) == 7
    with pytest.raises(ValueError, match="class_ids differ"):
        Conditioning.mean(rows[1:])
    half = batch.to("cpu", torch.float64)
    assert half.states.dtype == torch.float64 and half.class_ids.dtype == torch.int64 and len(batch[1:]) == 2
