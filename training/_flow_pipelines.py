"""What differs between diffusers' flow-matching pipelines, behind one small interface the GRPO loop uses.

The loop needs, per family: prompt conditioning (through the pipeline's own `encode_prompt`), the initial
noise, the schedule's sigmas, the velocity at one step (with the family's guidance), and the decoded
image. Sampling and training call the same `velocity`, so a freshly sampled step's ratio is exactly 1.
diffusers' `__call__` cannot serve: it runs under `torch.no_grad` and steps an Euler scheduler with no
log-probability, so the few lines of each family's denoising loop are repeated here (diffusers 0.42).

- FLUX (`FluxPipeline`): packed 2x2 latent patches, timestep / 1000, the embedded guidance of
  FLUX.1-dev (`guidance_embeds`), the schedule shifted by the image's sequence length (`mu`).
- SD3 (`StableDiffusion3Pipeline`): classifier-free guidance in one doubled batch, timesteps in 0..1000.
- Wan2.1 (`WanPipeline`, video): classifier-free guidance in two passes, timesteps in 0..1000, latents
  (B, C, F, H, W) normalised by the VAE's per-channel mean and std. Wan ships a UniPC multistep scheduler;
  the SDE needs a one-step flow-matching schedule, so the sigmas come from a `FlowMatchEulerDiscreteScheduler`
  with the pipeline's `flow_shift`. Wan2.2 (two transformers, per-token timesteps) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from training._config import ConfigError

__all__ = ["FlowFamily", "family_of"]


@dataclass
class Schedule:
    """The sampling schedule: `sigmas` has one more entry than `timesteps` (the last is 0)."""

    timesteps: list[float]
    sigmas: list[float]


class FlowFamily:
    """One pipeline family. `cond` is a dict of batch-aligned tensors (row k conditions sample k), plus
    entries that are the same for every row (`shared`)."""

    name = "base"
    shared: tuple[str, ...] = ()

    def __init__(
        self,
        pipe: Any,
        *,
        height: int,
        width: int,
        guidance_scale: float,
        max_sequence_length: int,
        num_frames: int = 1,
    ) -> None:
        self.pipe = pipe
        self.height, self.width, self.num_frames = height, width, num_frames
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length

    def encode(self, prompts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def initial_latents(self, count: int, generator: Any, device: Any) -> Any:
        raise NotImplementedError

    def schedule(self, steps: int, device: Any) -> Schedule:
        raise NotImplementedError

    def velocity(self, transformer: Any, latents: Any, timestep: float, cond: dict[str, Any]) -> Any:
        raise NotImplementedError

    def decode(self, latents: Any) -> Any:
        """Images (B, 3, H, W) or videos (B, 3, F, H, W) with values in [0, 1]."""
        raise NotImplementedError

    def candidates(self, decoded: Any) -> Any:
        """What the reward function takes: the image batch as it is (B, 3, H, W) on the CPU."""
        return decoded.cpu()

    def rows(self, cond: dict[str, Any], index: Any) -> dict[str, Any]:
        """The conditioning of the samples `index` (a slice or index tensor)."""
        return {k: v if k in self.shared or v is None else v[index] for k, v in cond.items()}

    def _to_unit(self, decoded: Any) -> Any:
        return (decoded.float() / 2 + 0.5).clamp(0, 1)


class FluxFamily(FlowFamily):
    name = "flux"
    shared = ("txt_ids", "img_ids")

    def encode(self, prompts: list[str]) -> dict[str, Any]:
        device = self.pipe.transformer.device
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=self.max_sequence_length
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    def initial_latents(self, count: int, generator: Any, device: Any) -> Any:
        channels = self.pipe.transformer.config.in_channels // 4
        dtype = self.pipe.transformer.dtype
        latents, image_ids = self.pipe.prepare_latents(
            count, channels, self.height, self.width, dtype, device, generator
        )
        self._image_ids = image_ids
        return latents

    def schedule(self, steps: int, device: Any) -> Schedule:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = self.pipe.scheduler
        factor = self.pipe.vae_scale_factor * 2
        seq_len = (self.height // factor) * (self.width // factor)
        mu = calculate_shift(
            seq_len,
            scheduler.config.get("base_image_seq_len", 256),
            scheduler.config.get("max_image_seq_len", 4096),
            scheduler.config.get("base_shift", 0.5),
            scheduler.config.get("max_shift", 1.15),
        )
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=device, mu=mu)
        return Schedule([float(t) for t in scheduler.timesteps], [float(s) for s in scheduler.sigmas])

    def velocity(self, transformer: Any, latents: Any, timestep: float, cond: dict[str, Any]) -> Any:
        import torch

        batch = latents.shape[0]
        t = torch.full((batch,), timestep / 1000, device=latents.device, dtype=latents.dtype)
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance_scale, device=latents.device, dtype=torch.float32)
        return transformer(
            hidden_states=latents,
            timestep=t,
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=cond["encoder_hidden_states"],
            txt_ids=cond["txt_ids"],
            img_ids=self._image_ids,
            return_dict=False,
        )[0]

    def decode(self, latents: Any) -> Any:
        pipe = self.pipe
        unpacked = pipe._unpack_latents(latents, self.height, self.width, pipe.vae_scale_factor)
        unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        return self._to_unit(pipe.vae.decode(unpacked.to(pipe.vae.dtype), return_dict=False)[0])


class SD3Family(FlowFamily):
    name = "sd3"

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def encode(self, prompts: list[str]) -> dict[str, Any]:
        device = self.pipe.transformer.device
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            do_classifier_free_guidance=self.cfg,
            negative_prompt=[""] * len(prompts) if self.cfg else None,
            max_sequence_length=self.max_sequence_length,
        )
        return {
            "encoder_hidden_states": embeds,
            "pooled_projections": pooled,
            "negative_encoder_hidden_states": negative,
            "negative_pooled_projections": negative_pooled,
        }

    def initial_latents(self, count: int, generator: Any, device: Any) -> Any:
        channels = self.pipe.transformer.config.in_channels
        dtype = self.pipe.transformer.dtype
        return self.pipe.prepare_latents(count, channels, self.height, self.width, dtype, device, generator)

    def schedule(self, steps: int, device: Any) -> Schedule:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        scheduler = self.pipe.scheduler
        kwargs: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = self.pipe.transformer.config.patch_size
            factor = self.pipe.vae_scale_factor * patch
            kwargs["mu"] = calculate_shift(
                (self.height // factor) * (self.width // factor),
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(steps, device=device, **kwargs)
        return Schedule([float(t) for t in scheduler.timesteps], [float(s) for s in scheduler.sigmas])

    def velocity(self, transformer: Any, latents: Any, timestep: float, cond: dict[str, Any]) -> Any:
        import torch

        embeds, pooled = cond["encoder_hidden_states"], cond["pooled_projections"]
        inputs = latents
        if self.cfg:
            inputs = torch.cat([latents, latents])
            embeds = torch.cat([cond["negative_encoder_hidden_states"], embeds])
            pooled = torch.cat([cond["negative_pooled_projections"], pooled])
        t = torch.full((inputs.shape[0],), timestep, device=latents.device, dtype=latents.dtype)
        out = transformer(
            hidden_states=inputs,
            timestep=t,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if not self.cfg:
            return out
        uncond, text = out.chunk(2)
        return uncond + self.guidance_scale * (text - uncond)

    def decode(self, latents: Any) -> Any:
        vae = self.pipe.vae
        scaled = latents / vae.config.scaling_factor + vae.config.shift_factor
        return self._to_unit(vae.decode(scaled.to(vae.dtype), return_dict=False)[0])


class WanFamily(FlowFamily):
    name = "wan"

    def __init__(self, pipe: Any, **kwargs: Any) -> None:
        super().__init__(pipe, **kwargs)
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("expand_timesteps", False):
            raise ConfigError("Wan2.2 pipelines (two transformers, per-token timesteps) are not supported")
        if (self.num_frames - 1) % pipe.vae_scale_factor_temporal:
            raise ConfigError(
                f"num_frames must be 1 more than a multiple of {pipe.vae_scale_factor_temporal}"
            )

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def encode(self, prompts: list[str]) -> dict[str, Any]:
        device = self.pipe.transformer.device
        embeds, negative = self.pipe.encode_prompt(
            prompt=prompts,
            negative_prompt=[""] * len(prompts) if self.cfg else None,
            do_classifier_free_guidance=self.cfg,
            max_sequence_length=self.max_sequence_length,
            device=device,
        )
        dtype = self.pipe.transformer.dtype
        return {
            "encoder_hidden_states": embeds.to(dtype),
            "negative_encoder_hidden_states": negative.to(dtype) if negative is not None else None,
        }

    def initial_latents(self, count: int, generator: Any, device: Any) -> Any:
        import torch

        channels = self.pipe.transformer.config.in_channels
        return self.pipe.prepare_latents(
            count, channels, self.height, self.width, self.num_frames, torch.float32, device, generator
        )

    def schedule(self, steps: int, device: Any) -> Schedule:
        from diffusers import FlowMatchEulerDiscreteScheduler

        shift = self.pipe.scheduler.config.get("flow_shift") or self.pipe.scheduler.config.get("shift") or 1.0
        scheduler = FlowMatchEulerDiscreteScheduler(shift=float(shift))
        scheduler.set_timesteps(steps, device=device)
        return Schedule([float(t) for t in scheduler.timesteps], [float(s) for s in scheduler.sigmas])

    def velocity(self, transformer: Any, latents: Any, timestep: float, cond: dict[str, Any]) -> Any:
        import torch

        t = torch.full((latents.shape[0],), timestep, device=latents.device, dtype=latents.dtype)

        def predict(embeds: Any) -> Any:
            return transformer(
                hidden_states=latents, timestep=t, encoder_hidden_states=embeds, return_dict=False
            )[0]

        text = predict(cond["encoder_hidden_states"])
        if not self.cfg:
            return text
        uncond = predict(cond["negative_encoder_hidden_states"])
        return uncond + self.guidance_scale * (text - uncond)

    def decode(self, latents: Any) -> Any:
        import torch

        vae = self.pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        return self._to_unit(vae.decode((latents * std + mean).to(vae.dtype), return_dict=False)[0])

    def candidates(self, decoded: Any) -> Any:
        """Each video as (F, H, W, 3) uint8 frames, as `flexjudge.judge` takes a video."""
        import torch

        frames = (decoded.permute(0, 2, 3, 4, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return list(frames)


FAMILIES: dict[str, type[FlowFamily]] = {"flux": FluxFamily, "sd3": SD3Family, "wan": WanFamily}
_BY_PIPELINE = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3", "WanPipeline": "wan"}


def family_of(pipe: Any, name: str, **kwargs: Any) -> FlowFamily:
    """The family adapter for `pipe`; `name` is `auto` or one of FAMILIES."""
    pipeline = type(pipe).__name__
    if name == "auto":
        if pipeline not in _BY_PIPELINE:
            raise ConfigError(
                f"{pipeline} is not a pipeline this script trains (FluxPipeline, StableDiffusion3Pipeline, "
                "WanPipeline); "
                "set `family` if it is one of their kind"
            )
        name = _BY_PIPELINE[pipeline]
    return FAMILIES[name](pipe, **kwargs)
