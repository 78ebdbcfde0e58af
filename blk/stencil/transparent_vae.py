"""LayerDiffuse's transparent VAE, written for this project: decoder (UNet1024) and offset encoder.

LayerDiffuse (Zhang & Agrawala, 2024) makes a diffusion model draw
transparent images: a LoRA teaches the model a latent that carries
transparency, and a separate decoder turns (the base VAE's RGB decode, the
raw latent) into RGBA. There is no package for it, so the modules are here,
with state-dict names and shapes identical to the official weight files
(checked against `tests/fixtures/layerdiffuse/`, a copy of `../shared/fixtures/`):

- Flux: `TransparentVAE.pth` — `encoder.*` + `decoder.*` (16 latent channels,
  output R,G,B,A); the file may also carry a copy of the base VAE under
  `sd_vae.*`, which is ignored.
- SDXL: `vae_transparent_decoder.safetensors` and
  `vae_transparent_encoder.safetensors` — bare names (4 latent channels,
  output A,R,G,B).

The decoder needs H and W in multiples of 64 (six stride-2 stages), and the
latent added before its fourth down block must be exactly H/8 × W/8.
"""

from __future__ import annotations

import torch
from torch import nn

FULL_WIDTHS = (32, 32, 64, 128, 256, 512, 512)
TINY_WIDTHS = (8, 8, 16, 16, 16, 32, 32)  # tests: same architecture, a sliver of the width
ENCODER_WIDTHS = (32, 64, 128, 256)
TINY_ENCODER_WIDTHS = (8, 8, 16, 16)
SIZE_MULTIPLE = 64
ENCODER_SCALE = 300.0  # the encoder's offset is multiplied by this before it moves the latent


class TransparentDecoder(nn.Module):
    """UNet1024: RGB decode (3 ch, 0..1) + raw latent → 4 channels (RGBA for Flux, ARGB for SDXL)."""

    def __init__(self, latent_channels: int, widths: tuple[int, ...] = FULL_WIDTHS, norm_groups: int = 4,
                 head_dim: int = 8):
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block

        super().__init__()
        self.conv_in = nn.Conv2d(3, widths[0], kernel_size=3, padding=1)
        self.latent_conv_in = nn.Conv2d(latent_channels, widths[2], kernel_size=1)
        kinds_down = ("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3
        kinds_up = ("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 4
        common = dict(temb_channels=None, resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=norm_groups,
                      attention_head_dim=head_dim, dropout=0.0)
        self.down_blocks = nn.ModuleList()
        out_channels = widths[0]
        for index, kind in enumerate(kinds_down):
            in_channels, out_channels = out_channels, widths[index]
            self.down_blocks.append(get_down_block(
                kind, num_layers=2, in_channels=in_channels, out_channels=out_channels,
                add_downsample=index < len(widths) - 1, downsample_padding=1, downsample_type="conv", **common))
        self.mid_block = UNetMidBlock2D(in_channels=widths[-1], temb_channels=None, resnet_eps=1e-5,
                                        resnet_act_fn="silu", resnet_groups=norm_groups, attention_head_dim=head_dim,
                                        add_attention=True)
        reversed_widths = list(reversed(widths))
        out_channels = reversed_widths[0]
        self.up_blocks = nn.ModuleList()
        for index, kind in enumerate(kinds_up):
            previous, out_channels = out_channels, reversed_widths[index]
            in_channels = reversed_widths[min(index + 1, len(widths) - 1)]
            self.up_blocks.append(get_up_block(
                kind, num_layers=3, in_channels=in_channels, out_channels=out_channels, prev_output_channel=previous,
                add_upsample=index < len(widths) - 1, upsample_type="conv", resolution_idx=index, **common))
        self.conv_norm_out = nn.GroupNorm(num_channels=widths[0], num_groups=norm_groups, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], 4, kernel_size=3, padding=1)

    def forward(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        latent_features = self.latent_conv_in(latent)
        sample = self.conv_in(pixel)
        skips = (sample,)
        for index, block in enumerate(self.down_blocks):
            if index == 3:  # the latent joins at 1/8 scale, where its grid matches the image's
                sample = sample + latent_features
            sample, residuals = block(hidden_states=sample, temb=None)
            skips += residuals
        sample = self.mid_block(sample, None)
        for block in self.up_blocks:
            residuals, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            sample = block(sample, residuals, None)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class TransparentEncoder(nn.Module):
    """LatentTransparencyOffsetEncoder: RGBA (0..1, colour padded into clear areas) → latent offset."""

    def __init__(self, latent_channels: int, widths: tuple[int, ...] = ENCODER_WIDTHS):
        super().__init__()
        a, b, c, d = widths
        layers = [nn.Conv2d(4, a, 3, padding=1), nn.SiLU(), nn.Conv2d(a, a, 3, padding=1), nn.SiLU(),
                  nn.Conv2d(a, b, 3, padding=1, stride=2), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU(),
                  nn.Conv2d(b, c, 3, padding=1, stride=2), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
                  nn.Conv2d(c, d, 3, padding=1, stride=2), nn.SiLU(), nn.Conv2d(d, d, 3, padding=1), nn.SiLU(),
                  nn.Conv2d(d, latent_channels, 3, padding=1)]
        self.blocks = nn.Sequential(*layers)

    def forward(self, rgba: torch.Tensor) -> torch.Tensor:
        return self.blocks(rgba)


def decode_augmented(decoder: TransparentDecoder, pixel: torch.Tensor, latent: torch.Tensor,
                     augment: bool = True) -> torch.Tensor:
    """The method's test-time augmentation: 8 flips/rotations, clipped, undone, lower median.

    Passes run in the order (flip, k) = F0..F3, T0..T3: flip the width axis,
    then rotate by k quarter turns; torch.median gives the lower of the two
    middle values, as the reference does.
    """
    if not augment:
        return decoder(pixel, latent).clip(0, 1)
    results = []
    for flip in (False, True):
        for turns in range(4):
            feed_pixel, feed_latent = pixel, latent
            if flip:
                feed_pixel, feed_latent = feed_pixel.flip(3), feed_latent.flip(3)
            feed_pixel = torch.rot90(feed_pixel, k=turns, dims=(2, 3))
            feed_latent = torch.rot90(feed_latent, k=turns, dims=(2, 3))
            out = torch.rot90(decoder(feed_pixel, feed_latent).clip(0, 1), k=-turns, dims=(2, 3))
            results.append(out.flip(3) if flip else out)
    return torch.median(torch.stack(results, dim=0), dim=0).values
