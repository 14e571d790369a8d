"""The stochastic sampling step of Flow-GRPO for flow-matching models, with the log-probability of each step.

A flow-matching model predicts a velocity `v` at noise level `sigma`; diffusers' Euler step is
`x_next = x + (sigma_next - sigma) * v`, which has no probability to give a policy gradient. Flow-GRPO
(Liu et al. 2025, eq. 9) samples the reverse SDE that has the same marginals instead:

    std_t  = noise_level * sqrt(sigma / (1 - sigma))          (sigma = 1 uses sigma_max = sigmas[1])
    dt     = sigma_next - sigma                                (negative: sigma falls)
    mean   = x * (1 + std_t**2 / (2 sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 sigma)) * dt
    x_next = mean + std_t * sqrt(-dt) * noise

so each step is a Gaussian transition N(mean, (std_t sqrt(-dt))^2) whose log-density is the step's
log-probability. At `noise_level` 0 the mean is the Euler step and the step is deterministic (it has no
density: `log_prob` is None then). The log-probability is the mean over a sample's elements, as Flow-GRPO
computes it: a sum over 16k latent elements would make every PPO ratio overflow, and the mean keeps the
clip range meaningful at any resolution. Computed in float32 whatever the model's dtype.

torch is imported at first use (the script's `--help` and config errors stay fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexjudge.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["Step", "sde_step", "step_std"]


@dataclass(frozen=True)
class Step:
    """One transition x -> x_next: the sample taken (or given), its log-probability per batch row (None
    when the step is deterministic), the Gaussian's mean and standard deviation."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor | None
    mean: torch.Tensor
    std: float


def step_std(sigma: float, sigma_next: float, *, noise_level: float, sigma_max: float) -> float:
    """The transition's standard deviation `std_t * sqrt(-dt)` (see the module docstring)."""
    if not 0.0 <= sigma_next < sigma <= 1.0:
        raise UsageError(f"sigmas must fall within [0, 1]: got {sigma} -> {sigma_next}")
    if noise_level < 0:
        raise UsageError(f"noise_level must be >= 0, got {noise_level}")
    # At sigma = 1 (pure noise) sqrt(sigma / (1 - sigma)) is infinite; Flow-GRPO uses the next sigma there.
    denominator = 1.0 - (sigma_max if sigma >= 1.0 else sigma)
    std_t = noise_level * math.sqrt(sigma / denominator)
    return std_t * math.sqrt(sigma - sigma_next)


def sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    noise_level: float,
    sigma_max: float,
    prev_sample: torch.Tensor | None = None,
    generator: Any = None,
) -> Step:
    """One SDE step from `sample` at `sigma` to `sigma_next` with the model's `velocity`.

    Without `prev_sample` the next sample is drawn (with `generator`); with it, its log-probability under
    this step's Gaussian is computed (the PPO ratio's numerator: `velocity` from the current model, with
    gradients). The log-probability is differentiable through `velocity`, never through `prev_sample`."""
    import torch

    v = velocity.float()
    x = sample.float()
    dt = sigma_next - sigma
    std = step_std(sigma, sigma_next, noise_level=noise_level, sigma_max=sigma_max)
    std_t2 = (std * std) / -dt  # std_t**2
    mean = x * (1 + std_t2 / (2 * sigma) * dt) + v * (1 + std_t2 * (1 - sigma) / (2 * sigma)) * dt
    if prev_sample is None:
        if std == 0.0:
            prev_sample = mean
        else:
            # Drawn where the generator lives (a CPU generator stays reproducible across devices).
            where = generator.device if generator is not None else x.device
            noise = torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)
            prev_sample = mean + std * noise
    if std == 0.0:
        return Step(prev_sample=prev_sample, log_prob=None, mean=mean, std=std)
    target = prev_sample.detach().float()
    log_density = -((target - mean) ** 2) / (2 * std * std) - math.log(std) - 0.5 * math.log(2 * math.pi)
    log_prob = log_density.mean(dim=tuple(range(1, log_density.ndim)))
    return Step(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std)
