#!/usr/bin/env bash
# On a lent GPU machine: install the carried wheels, build models of the real shapes with random weights,
# and run the benchmarks named (any of: upscale, upscale-malloc, generate, train, train-memory). Logs go to $OUT
# (they come back).
#
#   bash bench/gpu/fetch_wheels.sh                                            # here, once: .whl/
#   run(carry=[".whl"], command="bash bench/gpu/run.sh upscale train", timeout_s=560)   # #7's tile loop, #4's speed
#   then, with what is left: train-memory (#4: the fixed-shuffle-orders row, ~4 min with the full build),
#   upscale-malloc (#7's 1 GP memory), generate (#5, met)
#
# A session's 15 device minutes hold the first call and its start (about 30 s); a second call needs what is left.
# Measured on an H100 (2026-11-27, command time): upscale 267 s, generate 198 s (60 s of it building the full
# FLUX.1-dev shapes), train-memory 137 s (the build kept on the warm machine), train 172 s.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/blk-gpu-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD"
# the libraries the benchmarks need, or stop here: a pyvips that fails to import is swallowed by the studio
# (it then reads large inputs whole), and the memory rows would measure the wrong path
python3 -c "import pyvips, diffusers, spandrel, optimum.quanto, prodigyopt; print('pyvips', pyvips.__version__, \
    'libvips', pyvips.version(0), pyvips.version(1))" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
workspace=/tmp/blk-bench-workspace
full_flux() {  # FLUX.1-dev's full shapes (19 + 38 blocks, T5-XXL), random bf16 weights; built once (ensure_built)
    python3 bench/shaped_models.py flux-dev "$workspace"
}
status=0
for part in "$@"; do
    echo "== $part ($(date +%T))"
    case "$part" in
        upscale)  # ours (eager, compiled) against basicsr's RealESRGANer, 1024² → 4096², the network alone
                  # eager and compiled, then host memory at 16 MP, 268 MP (a 16 MP input, held whole) and 1 GP
            python3 bench/shaped_models.py realesrgan-x4plus /tmp/x4plus.pth &&
            python3 bench/upscale.py --model /tmp/x4plus.pth --compare-only --compiled --layouts \
                --peer-python "$(command -v python3)" 2>&1 | tee "$out/upscale-compare.txt" &&
            python3 bench/upscale.py --model /tmp/x4plus.pth --memory-only --sizes 4096 16384 32768 \
                2>&1 | tee "$out/upscale-memory.txt" ;;
        upscale-malloc)  # the 1 GP memory row (1304 MB before the streamed TIFF, 1506 after, 16 MP: 1147) under
                         # glibc settings: 2 arenas (the 16 deflate threads' freed blocks?), a fixed 4 MB mmap
                         # threshold (the tiles phase's growth on a CPU: +240 → +82 MB), both; ~1 min each
            python3 bench/shaped_models.py realesrgan-x4plus /tmp/x4plus.pth &&
            for setting in MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=4194304 "MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=4194304"; do
                echo "-- $setting"
                env $setting python3 bench/upscale.py --model /tmp/x4plus.pth --memory-only --sizes 32768 || exit 1
            done 2>&1 | tee "$out/upscale-malloc.txt" ;;
        generate)  # the studio's Sketch path against the plain pipeline, FLUX.1-dev shapes, 1 MP, 28 steps
            full_flux &&
            python3 bench/generate.py --workspace "$workspace" --model flux-dev --size 1024 --steps 28 --images 2 \
                --only plain,compiled,batch --attention none 2>&1 | tee "$out/generate.txt" ;;  # tuned: no faster (H100)
        train-memory)  # the Conceptor preset (rank 32, int8 base) at 1024 px on FLUX.1-dev shapes: the 24 GB target
            full_flux &&
            python3 bench/train_memory.py --workspace "$workspace" 2>&1 | tee "$out/train-memory.txt" ;;
        train)  # ours against diffusers' Flux LoRA example (speed rows: 3 double + 6 single blocks),
                # 100 timed steps (30 moved ±20 % between cards)
            python3 bench/shaped_models.py flux-dev "$workspace-train" --double 3 --single 6 --t5-layers 2 &&
            python3 bench/train.py --workspace "$workspace-train" --model flux-dev --size 512 --steps 120 \
                --warmup 20 2>&1 | tee "$out/train.txt" ;;
        *) echo "unknown part: $part (upscale, upscale-malloc, generate, train, train-memory)"; false ;;
    esac || status=1
done
exit $status
