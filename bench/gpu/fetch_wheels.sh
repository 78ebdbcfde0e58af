#!/usr/bin/env bash
# Here (a machine with PyPI), before a session's first device call: the wheels the lent GPU machine lacks.
# Its image has torch, accelerate, peft, safetensors, tifffile, opencv, scikit-image … for Python 3.12
# (/work/.library/device/KINDS.md) but not diffusers, spandrel, pyvips, quanto, prodigy or basicsr, and it
# reaches no registry (hf-xet is left out: downloads only). They go to .whl/ (in .gitignore; about 60 MiB, under the 64 MiB a call carries with
# the repository). bench/gpu/run.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl  # no wheel of an older pin may stay beside its successor (pip refuses two versions)
fetch() {  # fetch FOLDER NAME==VERSION …: binary wheels for CPython 3.12 on manylinux x86-64, no dependencies
    local folder=$1
    shift
    mkdir -p "$folder"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$folder" "$@"
}
fetch .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    huggingface-hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 anyio==4.16.0 h11==0.16.0 \
    idna==3.20 click==8.5.1 diffusers==0.42.1 transformers==5.24.0 optimum-quanto==0.2.7 prodigyopt==1.1.2 \
    spandrel==0.4.2 pyvips-binary==8.18.7 cffi==2.1.1 pycparser==3.12 imagecodecs==2026.10.10
# basicsr and realesrgan come as source only: built here into pure-Python wheels (their setup imports torch).
# pyvips too: its newest wheel (2.1.0) cannot load pyvips-binary 8.18's libvips ("undefined type name
# VipsCallbackFn"), and the upscale benchmark would silently decode whole what it must read by region;
# 3.x builds into a py3-none-any wheel that uses pyvips-binary, as the studio's own environment does.
python3 -m venv /tmp/blk-wheel-builder
/tmp/blk-wheel-builder/bin/pip install -q torch==2.13.0 setuptools wheel numpy
/tmp/blk-wheel-builder/bin/pip wheel -q --no-deps --no-build-isolation -w .whl basicsr==1.4.2 realesrgan==0.3.0
/tmp/blk-wheel-builder/bin/pip wheel -q --no-deps -w .whl pyvips==3.2.0
du -sh .whl
