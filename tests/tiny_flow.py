"""Tiny random-weight flow-matching pipelines (FLUX, SD3, Wan2.1) built from configs, offline, with tiny
local text encoders and a byte-level tokenizer trained here, so the pipelines' own `encode_prompt` runs as
with real checkpoints. Saved to a directory and loaded back by path, as the training script loads one.

Also a rule judge for GRPO tests: the redder image or video (mean of the red channel minus the others)
wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexjudge.backends.base import Generation, ImagePart, Request
from tests.simulated import judgment_text

COLOUR_PROMPTS = ["a red apple", "a green field", "a blue sky", "a red car", "a yellow sun", "a white cat"]


def tokenizer(max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|startoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(COLOUR_PROMPTS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
        padding_side="right",
    )


def _clip(tok: Any, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tok),
        projection_dim=32,
        max_position_embeddings=77,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5(tok: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tok.pad_token_id,
            decoder_start_token_id=0,
        )
    )


def _vae(latent_channels: int) -> Any:
    """A one-block VAE for 32x32 images (FLUX's tiny pipeline packs 1 latent channel, SD3's takes 4)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def build_flux(out: Path, seed: int = 0) -> Path:
    """A tiny FluxPipeline (guidance-embedded, as FLUX.1-dev) saved at `out`; 32x32 images."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    vae = _vae(latent_channels=1)
    tok, tok2 = tokenizer(77), tokenizer(64)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=_clip(tok, False),
        tokenizer=tok,
        text_encoder_2=_t5(tok2),
        tokenizer_2=tok2,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    return out


def build_sd3(out: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusion3Pipeline saved at `out`; 32x32 images."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    vae = _vae(latent_channels=4)
    tok, tok2, tok3 = tokenizer(77), tokenizer(77), tokenizer(64)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=_clip(tok, True),
        tokenizer=tok,
        text_encoder_2=_clip(tok2, True),
        tokenizer_2=tok2,
        text_encoder_3=_t5(tok3),
        tokenizer_3=tok3,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    return out


def build_wan(out: Path, seed: int = 0) -> Path:
    """A tiny WanPipeline (Wan2.1 layout, its UniPC scheduler with a flow shift) saved at `out`; 16x16
    videos of 5 frames."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip
    tok = tokenizer(64)
    encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, decoder_start_token_id=0,
        )
    )  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    WanPipeline(
        tokenizer=tok, text_encoder=encoder, vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(out)
    return out


def redness(image: Any) -> float:
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return float((pixels[..., 0] - (pixels[..., 1] + pixels[..., 2]) / 2).mean())


class RednessJudge:
    """A rule judge as a `Backend`: of two images, the redder wins every category and overall (a
    flex judgment, read by the real parser)."""

    name = "redness"
    model = "redness-judge"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, requests: list[Request]) -> list[Generation]:
        return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Generation:
        images = [p.image for m in request.messages for p in m.parts if isinstance(p, ImagePart)]
        if not images:  # the openai backend's capability probe
            return Generation(text='{"ok": true}', finish_reason="stop", constrained=True)
        self.calls += 1
        # An image pair shows 2 images; a video pair the frames of the first video, then the second's.
        half = len(images) // 2
        first = sum(redness(i) for i in images[:half]) / half
        second = sum(redness(i) for i in images[half:]) / half
        winner = 1 if first >= second else 2
        return Generation(text=judgment_text(winner), finish_reason="stop", constrained=False)

    async def aclose(self) -> None:
        return None
