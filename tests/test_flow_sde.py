"""The SDE step of training/_flow_sde.py against independent computations: the Gaussian density from
torch.distributions, the mean from the SDE's drift written in score form, diffusers' Euler step at noise
level 0, and a sampled trajectory's log-probabilities recomputed from its samples."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flexjudge.errors import UsageError  # noqa: E402
from training._flow_sde import sde_step, step_std  # noqa: E402


def _schedule(steps: int = 6) -> object:
    """FLUX's shifted schedule (dynamic shifting with a mu), as FluxPipeline sets it."""
    import numpy as np

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=0.8)
    return scheduler


def _velocity_field(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(4, 4, 3, padding=1)


def test_the_log_prob_is_the_gaussian_density_of_the_sde_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    v = torch.randn(3, 4, 8, 8, generator=gen)
    sigma, sigma_next, level, sigma_max = 0.8, 0.6, 0.7, 0.95
    step = sde_step(v, x, sigma, sigma_next, noise_level=level, sigma_max=sigma_max, generator=gen)
    # Independently: the drift in score form, dx = [v + std_t^2 / (2 sigma) * (x + (1 - sigma) v)] dt.
    dt = sigma_next - sigma
    std_t = level * math.sqrt(sigma / (1 - sigma))
    mean = x + (v + std_t**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    std = std_t * math.sqrt(-dt)
    assert step.std == pytest.approx(std)
    torch.testing.assert_close(step.mean, mean)
    density = torch.distributions.Normal(mean, std).log_prob(step.prev_sample).mean(dim=(1, 2, 3))
    assert step.log_prob is not None
    torch.testing.assert_close(step.log_prob, density)
    # The draw has that mean and spread (3 x 256 independent elements).
    residual = (step.prev_sample - mean) / std
    assert abs(float(residual.mean())) < 0.15 and abs(float(residual.std()) - 1) < 0.1


def test_at_sigma_one_the_std_uses_sigma_max() -> None:
    assert step_std(1.0, 0.9, noise_level=0.5, sigma_max=0.9) == pytest.approx(
        0.5 * math.sqrt(1 / 0.1) * 0.1**0.5
    )
    with pytest.raises(UsageError):
        step_std(0.5, 0.6, noise_level=0.5, sigma_max=0.9)


def test_at_noise_level_zero_it_is_the_schedulers_euler_step() -> None:
    scheduler = _schedule()
    model = _velocity_field()
    sigmas = [float(s) for s in scheduler.sigmas]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = theirs = x
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            step = sde_step(model(ours), ours, sigmas[i], sigmas[i + 1], noise_level=0.0, sigma_max=sigmas[1])
            assert step.log_prob is None
            ours = step.prev_sample
            theirs = scheduler.step(model(theirs), t, theirs, return_dict=False)[0]
            torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, x)


def test_a_trajectorys_recomputed_log_probs_equal_those_of_sampling() -> None:
    scheduler = _schedule()
    model = _velocity_field()
    sigmas = [float(s) for s in scheduler.sigmas]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    trajectory, sampled = [x], []
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            step = sde_step(model(x), x, sigmas[i], sigmas[i + 1], noise_level=0.7, sigma_max=sigmas[1],
                            generator=gen)  # fmt: skip
            x = step.prev_sample
            trajectory.append(x)
            sampled.append(step.log_prob)
    other = _velocity_field(seed=5)
    for i in range(len(sigmas) - 1):
        kwargs = {"noise_level": 0.7, "sigma_max": sigmas[1], "prev_sample": trajectory[i + 1]}
        again = sde_step(model(trajectory[i]), trajectory[i], sigmas[i], sigmas[i + 1], **kwargs)
        assert again.log_prob is not None and again.log_prob.requires_grad  # the ratio's gradient flows
        torch.testing.assert_close(again.log_prob, sampled[i])
        # Under another model the same transition is less likely: the ratio sees the policy.
        elsewhere = sde_step(other(trajectory[i]), trajectory[i], sigmas[i], sigmas[i + 1], **kwargs)
        assert elsewhere.log_prob is not None and bool((elsewhere.log_prob < again.log_prob).all())
