"""The generator of `generator_learns.py`: tests/tiny_flow.py's tiny random SD3 pipeline with a VAE whose
decoder can show colours.

Why not the random tiny pipelines as they are: their one-block VAE decoders end in a GroupNorm over every
channel and pixel, and with random weights the decoded mean colour barely moves whatever the latents
(measured: every sample of tiny FLUX within about 3 levels of (154, 66, 145) in 0-255, SD3's within about
6 of (161, 131, 116)), so no generator could get closer to a named colour through them. Here the decoder
is the same diffusers `AutoencoderKL` (the class a real SD3 checkpoint ships) with weights set by hand:
its residual branches are zeroed (each block is the identity, each upsampler nearest-neighbour), `conv_in`
copies the 4 latent channels and adds 4 constant channels (so that the final GroupNorm keeps the latent
channels' differences instead of removing them), and `conv_out` reads red, green and blue off latent
channels 0, 1 and 2. A latent whose channel means are m shows roughly the colour grey + m: a decoder a
colour can be expressed through, as a trained VAE's is. Two upsamplings make a 16x16 image from a 4x4
latent (16 tokens). The transformer, text encoders and tokenizers stay random: the generator starts with
no idea of colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENT_CHANNELS = 4
WIDTH = 8  # decoder channels: the 4 latent ones, then 4 constant ones
BLOCKS = 3  # two 2x upsamplings: a 16x16 image from a 4x4 latent (colour needs no spatial detail, and the
# mean of 16 latent pixels, not 256, carries the sampler's noise: a sample's colour varies within a group)
CONSTANTS = (2.0, -2.0, 2.0, -2.0)
BIAS = 3.0  # shifts the normalised colour channels to where SiLU is close to linear
GAIN = 0.6  # normalised channel -> output in [-1, 1] (then [0, 1] after the pipeline's x / 2 + 0.5)


def colour_vae(size: int) -> Any:
    """The hand-set decoder described in the module docstring (its encoder stays random: never used)."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * BLOCKS,
        block_out_channels=(WIDTH,) * BLOCKS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,
        scaling_factor=1.0,
    )
    dec = vae.decoder
    with torch.no_grad():
        centre = dec.conv_in.kernel_size[0] // 2
        for module in [*dec.mid_block.resnets, *(r for b in dec.up_blocks for r in b.resnets)]:
            module.conv2.weight.zero_()  # residual branch off: the block is the identity
            module.conv2.bias.zero_()
        for upsampler in (u for b in dec.up_blocks for u in b.upsamplers or []):
            upsampler.conv.weight.zero_()  # nearest-neighbour upsampling, then the identity
            upsampler.conv.bias.zero_()
            for c in range(WIDTH):
                upsampler.conv.weight[c, c, centre, centre] = 1.0
        for attention in dec.mid_block.attentions:
            attention.to_out[0].weight.zero_()
            attention.to_out[0].bias.zero_()
        dec.conv_in.weight.zero_()
        dec.conv_in.bias.zero_()
        for c in range(LATENT_CHANNELS):
            dec.conv_in.weight[c, c, centre, centre] = 1.0
        dec.conv_in.bias[LATENT_CHANNELS:] = torch.tensor(CONSTANTS)
        dec.conv_norm_out.weight.fill_(1.0)
        dec.conv_norm_out.bias.zero_()
        dec.conv_norm_out.bias[:3] = BIAS
        silu_at_bias = float(torch.nn.functional.silu(torch.tensor(BIAS)))
        dec.conv_out.weight.zero_()
        for c in range(3):
            dec.conv_out.weight[c, c, centre, centre] = GAIN
        dec.conv_out.bias.fill_(-GAIN * silu_at_bias)  # latent 0 shows mid grey
    return vae


def build_colour_sd3(out: Path, seed: int = 0, size: int = 16) -> Path:
    """tests/tiny_flow.py's tiny SD3 pipeline (random transformer and text encoders, seeded by `seed`)
    with `colour_vae` in place of its random VAE, saved at `out`."""
    from tests.tiny_flow import build_sd3

    build_sd3(out, seed=seed)
    colour_vae(size).save_pretrained(out / "vae")
    return out
