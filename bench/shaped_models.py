"""Random-weight models with the real architectures' shapes, for benchmarks on a machine that cannot
download weights (a lent GPU machine reaches no model hub).

Speed and memory depend on shapes, not on values: a FLUX.1-dev-shaped transformer (3072 wide, 24 heads,
joint attention over T5-XXL-wide text) runs the same kernels at the same sizes as the real one. Depth is
a choice (`--double`, `--single`, `--t5-layers`): the full 19 + 38 blocks and 24 T5 layers for a memory
check, fewer for speed rows, whose ratios (ours / plain, compiled / not) are per block. The folder is an
ordinary diffusers folder, saved where the registry looks for the real model (`WORKSPACE/models/NAME`),
with a `RANDOM-WEIGHTS.txt` beside it so that nobody takes it for the real one. Its images are noise.

    python bench/shaped_models.py flux-dev WORKSPACE [--double 19 --single 38 --t5-layers 24]
    python bench/shaped_models.py realesrgan-x4plus FILE.pth      # RRDBNet 64 features, 23 blocks, ×4

Tokenizers are the tiny byte-level ones (`blk.models.tiny`); the pipeline pads T5's text to 512 tokens
and CLIP's to 77 as with the real tokenizers, so sequence lengths match.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blk  # noqa: E402,F401  (offline environment first)

MARKER = "RANDOM-WEIGHTS.txt"


def flux_dev_shaped(double: int = 19, single: int = 38, t5_layers: int = 24, clip_layers: int = 12,
                    device: str = "cpu"):
    """A FluxPipeline with FLUX.1-dev's configuration (depths as given), random bf16 weights."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from blk.models.tiny import CLIP_MAX_LENGTH, tiny_clip_tokenizer, tiny_t5_tokenizer

    torch.manual_seed(0)
    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 on the device: a 12B model in seconds
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=len(clip_tok), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                num_hidden_layers=clip_layers, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu",
                projection_dim=768, bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id))
            text_encoder_2 = T5EncoderModel(T5Config(
                vocab_size=len(t5_tok), d_model=4096, d_kv=64, d_ff=10240, num_layers=t5_layers, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                relative_attention_max_distance=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)


def save_flux_dev(workspace: Path, double: int, single: int, t5_layers: int, device: str) -> Path:
    from blk.models.tiny import ensure_built

    folder = Path(workspace) / "models" / "flux-dev"
    shape = f"flux-dev-shaped double={double} single={single} t5_layers={t5_layers}"

    def build(staging: Path) -> None:
        pipe = flux_dev_shaped(double, single, t5_layers, device=device)
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / MARKER).write_text(f"Random weights with FLUX.1-dev's shapes, for benchmarks only: {shape}.\n")

    return ensure_built(folder, shape, build)


def parameters(folder: Path) -> int:
    """Parameters saved in the folder, read from the safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=("flux-dev", "realesrgan-x4plus"))
    parser.add_argument("target", help="a workspace folder (flux-dev) or a .pth file (realesrgan-x4plus)")
    parser.add_argument("--double", type=int, default=19, help="double-stream blocks (FLUX.1-dev: 19)")
    parser.add_argument("--single", type=int, default=38, help="single-stream blocks (FLUX.1-dev: 38)")
    parser.add_argument("--t5-layers", type=int, default=24, help="T5 encoder layers (T5-XXL: 24)")
    parser.add_argument("--device", default="cuda", help="where the weights are initialised (cuda is fastest)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.model == "realesrgan-x4plus":
        sys.path.insert(0, str(ROOT / "bench"))
        from upscale import tiny_rrdb

        path = tiny_rrdb(Path(args.target), nf=64, nb=23, gc=32)
        print(f"{path}: RRDBNet 64 features, 23 blocks, ×4, random weights ({time.perf_counter() - start:.1f} s)")
        return
    import torch

    device = args.device if torch.cuda.is_available() or not args.device.startswith("cuda") else "cpu"
    folder = save_flux_dev(Path(args.target), args.double, args.single, args.t5_layers, device)
    print(f"{folder}: FLUX.1-dev shapes, {args.double} double + {args.single} single blocks, T5 {args.t5_layers} "
          f"layers, {parameters(folder) / 1e9:.2f} B parameters, random bf16 ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
