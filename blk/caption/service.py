"""What the app keeps between clicks for captioning: one managed vLLM server and the batch's cancel switch.

The CLI starts a server per command (`job.run`); the app keeps one running
until the user stops it or the app exits, so that several batches share it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from blk.caption.batch import BatchResult, Progress
from blk.caption.job import CaptionJob, job_style, resolve_vlm
from blk.caption.job import run as run_job
from blk.workspace import Workspace


class CaptionService:
    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.server = None
        self.server_model: str | None = None
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._counters: dict[str, object] = {}  # model name → its TokenCounter, loaded once
        self._counters_lock = threading.Lock()
        self.token_model: str | None = None  # whose tokenizers count caption tokens; None: the default model
        self._batches = 0  # batches running now (several browser tabs may each run one)
        self._batches_lock = threading.Lock()

    def token_model_name(self) -> str:
        """The model whose text encoders' budgets the grid and the check count against: the one chosen,
        else the default model (the one training would use)."""
        from blk.models.registry import default_model

        return self.token_model or default_model(self.workspace)[0]

    def token_counter(self):
        """Caption token counts with the chosen model's tokenizers (Flux: CLIP and T5; SDXL: two CLIPs)."""
        from blk.data.grid import model_token_counter

        name = self.token_model_name()
        with self._counters_lock:  # the grid and the check may ask at once: load the tokenizers once
            if name not in self._counters:
                self._counters[name] = model_token_counter(self.workspace, name)
            return self._counters[name]

    # the managed server ------------------------------------------------------
    def start_server(self, model: str, max_images: int = 4, image_size: int = 1024, answer_tokens: int = 300) -> str:
        from blk.caption.server import ManagedServer, find_vllm_python, model_length, server_config

        max_images = max(max_images, 4)
        with self._lock:
            if self.server is not None and self.server.healthy() and self.server_model == model \
                    and self.server.config.max_images >= max_images \
                    and self.server.config.max_model_len >= model_length(max_images, image_size, answer_tokens,
                                                                         self.server.config.model):
                return self.status()
            self._stop_locked()
            config = server_config(resolve_vlm(model, self.workspace),
                                   find_vllm_python(self.workspace.settings.vllm_python), max_images,
                                   self.workspace.settings.device, image_size, answer_tokens=answer_tokens)
            server = ManagedServer(config, self.workspace.root / "caption-server")
            server.start()
            self.server, self.server_model = server, model
            return self.status()

    def stop_server(self) -> str:
        with self._lock:
            self._stop_locked()
        return self.status()

    def _stop_locked(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server, self.server_model = None, None

    def status(self) -> str:
        if self.server is None:
            return "No captioning server is running."
        if not self.server.healthy():
            return f"The captioning server for {self.server_model} is not answering. Its log ends:\n{self.server.log_tail(8)}"
        return f"Serving {self.server_model} at {self.server.url} (up to {self.server.config.max_images} images per request)."

    def close(self) -> None:
        self.cancel.set()
        self.stop_server()

    # batches -----------------------------------------------------------------
    def run(self, job: CaptionJob, progress: Callable[[Progress], None] | None = None) -> BatchResult:
        """The job's own recipe (`job.run`); the managed case uses this app's long-lived server.

        A cancel from the moment the batch starts counts, also while the server is starting.
        """
        with self._batches_lock:
            self._batches += 1
            self.cancel.clear()
        try:
            if job.backend == "vllm" and not job.vllm_url:
                style = job_style(job, self.workspace.dataset_folder(job.dataset))
                self.start_server(job.model, len(style.examples) + 1, style.image_size, style.sampling.max_tokens)
                job = job.model_copy(update={"vllm_url": self.server.url})
            return run_job(job, self.workspace, progress, self.cancel)
        finally:
            with self._batches_lock:
                self._batches -= 1

    @property
    def running(self) -> bool:
        """Whether a caption batch is running now."""
        return self._batches > 0

    def cancel_batch(self) -> str:
        """Ask the running batch to stop; one sentence for the user either way."""
        if not self.running:
            return "No caption batch is running."
        self.cancel.set()
        return "Cancelling… the requests in flight finish first; finished captions are kept."

    def dataset(self, name: str) -> Path:
        return self.workspace.named_dataset(name)
