"""Batch captioning through real backends: transformers in-process and a real vLLM server.

Random weights give the same words for every image, so these tests check what
can be checked: requests (images and tokens sent), files, history, statuses,
skips, failures and processes — not the wording.
"""

import os

import numpy as np
import pytest
from PIL import Image

from blk.caption.backends import ServerBackend, TransformersBackend
from blk.caption.batch import caption_dataset
from blk.caption.job import CaptionJob, resolve_vlm, run
from blk.caption.prompt import build_messages, prepare_image
from blk.caption.style import CaptionStyle, Example, Sampling, save_style, dataset_style_path
from blk.data.captions import CaptionStore
from blk.errors import UserError

TARGETS = 8


def make_dataset(folder):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(TARGETS):
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(folder / f"img {i}.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(folder / "img 7.png")  # one RGBA among them
    for name in ("example a.png", "example b.jpg"):
        Image.new("RGB", (60, 40), (20, 120, 200)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    store = CaptionStore(folder)
    for name, text in (("example a.png", "a blue field, calm"), ("example b.jpg", "a blue sky, wide")):
        saved = store.save(name, text, "", source="human")
        store.approve(name, saved.hash)
    style = CaptionStyle(examples=[Example(image="example a.png", caption="a blue field, calm"),
                                   Example(image="example b.jpg", caption="a blue sky, wide")],
                         image_size=56, sampling=Sampling(temperature=0.0, max_tokens=6))
    save_style(style, dataset_style_path(folder))
    return style


@pytest.fixture(scope="module")
def tiny_vlm(shared_workspace):
    return resolve_vlm("tiny-vlm", shared_workspace)


@pytest.fixture(scope="module")
def transformers_backend(tiny_vlm):
    return TransformersBackend(tiny_vlm, ignore_eos=True)


def check_finished_dataset(folder, result):
    store = CaptionStore(folder)
    targets = {f"img {i}.png" for i in range(TARGETS)}
    assert set(result.captioned) == targets
    assert [rel for rel, _ in result.failed] == ["broken.png"]
    assert {rel for rel, _ in result.skipped} == {"example a.png", "example b.jpg"}
    for rel in targets:
        assert store.status(rel) == "machine"
        assert store.read(rel).text.strip()
        assert store.versions(rel)[-1]["source"] == "model"
    assert store.status("example a.png") == "approved"
    assert all(r["images_sent"] == 3 for r in result.requests)  # 2 examples + the target, every time


def test_transformers_backend_batch(tmp_path, shared_workspace):
    folder = tmp_path / "ds"
    make_dataset(folder)
    job = CaptionJob(dataset=str(folder), backend="transformers", model="tiny-vlm", ignore_eos=True)
    result = run(job, shared_workspace)
    check_finished_dataset(folder, result)
    assert all(r["completion_tokens"] == 6 for r in result.requests)
    again = run(job, shared_workspace)  # a re-run skips what is finished
    assert again.captioned == [] and len(again.skipped) == TARGETS + 2


def test_person_edits_are_never_overwritten_unless_asked(tmp_path, transformers_backend):
    folder = tmp_path / "ds"
    style = make_dataset(folder)
    store = CaptionStore(folder)
    store.save("img 0.png", "my own words", "", source="human")
    result = caption_dataset(folder, style, transformers_backend, mode="all")
    assert "img 0.png" not in result.captioned and store.read("img 0.png").text == "my own words"
    assert ("img 0.png", "edited by a person") in result.skipped
    forced = caption_dataset(folder, style, transformers_backend, mode="selected", selected=["img 0.png"], overwrite=True)
    assert forced.captioned == ["img 0.png"] and store.status("img 0.png") == "machine"
    assert [v["text"] for v in store.versions("img 0.png")][0] == "my own words"  # still in history


def test_empty_dataset_and_missing_server(tmp_path, shared_workspace):
    """An empty dataset is one sentence and loads no model (it loaded one, then said "captioned 0"); a dataset
    with nothing left to caption returns its skips without loading one either."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty has no images to caption"):
        run(CaptionJob(dataset=str(tmp_path / "empty"), backend="transformers", model="tiny-vlm"), shared_workspace)
    done = tmp_path / "done"
    make_dataset(done)
    for image in done.glob("*.png"):
        image.with_suffix(".txt").write_text("blkstyle, already captioned")
    result = run(CaptionJob(dataset=str(done), backend="transformers", model="no-such-captioner"), shared_workspace)
    reasons = {why for _, why in result.skipped}
    assert result.captioned == [] and reasons == {"already captioned", "it is a few-shot example"}, result
    unnamed = tmp_path / "unnamed"
    make_dataset(unnamed)
    with pytest.raises(UserError, match="Which captioning model"):  # no default captioner writes unasked
        run(CaptionJob(dataset=str(unnamed), backend="transformers"), shared_workspace)
    assert not (unnamed / "img 0.txt").exists()
    with pytest.raises(UserError, match="No captioning server answers"):
        from blk.caption.server import free_port

        ServerBackend(f"http://127.0.0.1:{free_port()}")


def test_a_model_without_vision_is_one_sentence(shared_workspace):
    text_only = shared_workspace.models / "tiny-flux" / "text_encoder"
    with pytest.raises(UserError, match="not a vision-language model"):
        TransformersBackend(resolve_vlm(str(text_only), shared_workspace))


# --- the real vLLM server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_server(tiny_vlm, tmp_path_factory):
    from blk.caption.server import ManagedServer, ServerConfig, find_vllm_python

    config = ServerConfig(model=tiny_vlm, python=find_vllm_python(), max_images=3, max_model_len=2048,
                          cpu=True, kv_cache_bytes=64 * 2**20)
    server = ManagedServer(config, tmp_path_factory.mktemp("vllm"))
    server.start(timeout_s=300)
    yield server
    server.stop()


def test_vllm_server_batch_with_two_examples(tmp_path, vllm_server, shared_workspace, transformers_backend):
    folder = tmp_path / "ds"
    style = make_dataset(folder)
    job = CaptionJob(dataset=str(folder), vllm_url=vllm_server.url, ignore_eos=True)
    result = run(job, shared_workspace)
    check_finished_dataset(folder, result)
    assert all(r["completion_tokens"] == 6 for r in result.requests)
    # the server saw the same prompt as transformers builds for the same messages
    messages = build_messages(style, folder, prepare_image(folder / "img 3.png", style.image_size, style.background))
    expected = transformers_backend.prompt_inputs(messages)["input_ids"].shape[1]
    served = {r["image"]: r["prompt_tokens"] for r in result.requests}
    assert served["img 3.png"] == expected
    zero_shot = ServerBackend(vllm_server.url).caption(messages[:1] + messages[-1:], style.sampling)
    assert zero_shot.prompt_tokens < expected  # the examples' images and captions were really sent


def test_managed_server_stops_cleanly(tiny_vlm, tmp_path):
    from blk.caption.server import ManagedServer, ServerConfig, find_vllm_python

    config = ServerConfig(model=tiny_vlm, python=find_vllm_python(), max_images=1, max_model_len=1024,
                          cpu=True, kv_cache_bytes=32 * 2**20)
    server = ManagedServer(config, tmp_path / "vllm").start(timeout_s=300)
    group, scratch = os.getpgid(server.process.pid), server.scratch
    assert server.healthy() and any(scratch.rglob("*"))
    server.stop()
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not scratch.exists()  # its sockets and temporary files are gone
    assert [p for p in (tmp_path / "vllm").rglob("*") if p.is_socket()] == []


def test_server_start_failure_shows_its_log(tmp_path, shared_workspace):
    from blk.caption.server import ManagedServer, ServerConfig, find_vllm_python

    not_a_model = tmp_path / "nothing"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    server = ManagedServer(ServerConfig(model=not_a_model, python=find_vllm_python(), cpu=True), tmp_path / "v")
    with pytest.raises(UserError, match="exited during start-up") as caught:
        server.start(timeout_s=300)
    assert "log ends" in str(caught.value)


def test_cli_caption_with_transformers(tmp_path, shared_workspace):
    import json

    from tests.conftest import run_blk

    folder = tmp_path / "ds"
    make_dataset(folder)
    unnamed = run_blk("--workspace", str(shared_workspace.root), "caption", str(folder), "--backend", "transformers")
    assert unnamed.returncode != 0 and "Which captioning model?" in unnamed.stderr  # never tiny-vlm unasked
    assert not (folder / "img 0.txt").exists()
    result = run_blk("--workspace", str(shared_workspace.root), "caption", str(folder), "--backend", "transformers",
                     "--vllm-model", "tiny-vlm", "--ignore-eos", "--json")
    assert result.returncode == 1, result.stderr  # broken.png failed, the rest went on
    report = json.loads(result.stdout)
    assert len(report["captioned"]) == TARGETS and [f[0] for f in report["failed"]] == ["broken.png"]
    assert "broken.png" in report["failed"][0][1] and "\n" not in report["failed"][0][1]
    rerun = run_blk("--workspace", str(shared_workspace.root), "caption", str(folder), "--backend", "transformers",
                    "--vllm-model", "tiny-vlm")
    assert "captioned 0, skipped 10, failed 1" in rerun.stdout


def test_server_killed_mid_batch_keeps_finished_captions(tmp_path, tiny_vlm, vllm_server):
    import signal

    from blk.caption.server import ManagedServer, ServerConfig, find_vllm_python

    folder = tmp_path / "ds"
    style = make_dataset(folder).model_copy(update={"sampling": Sampling(temperature=0.0, max_tokens=300)})
    doomed = ManagedServer(ServerConfig(model=tiny_vlm, python=find_vllm_python(), max_images=3, max_model_len=2048,
                                        max_num_seqs=1, cpu=True, kv_cache_bytes=64 * 2**20), tmp_path / "doomed")
    doomed.start(timeout_s=300)
    try:
        backend = ServerBackend(doomed.url, max_concurrency=1, ignore_eos=True)

        def kill_after_first(progress):
            if progress.done == 1:
                os.killpg(doomed.process.pid, signal.SIGKILL)

        result = caption_dataset(folder, style, backend, progress=kill_after_first)
    finally:
        doomed.stop()
    assert len(result.captioned) == 1 and result.stopped_because and "stopped answering" in result.stopped_because
    assert len(result.not_attempted) >= TARGETS - 3
    store = CaptionStore(folder)
    assert store.status(result.captioned[0]) == "machine"
    assert not [p for p in folder.rglob("*") if p.name.startswith(".blk-tmp")]
    rerun = caption_dataset(folder, style.model_copy(update={"sampling": Sampling(temperature=0.0, max_tokens=4)}),
                            ServerBackend(vllm_server.url))
    assert set(rerun.captioned) | set(result.captioned) == {f"img {i}.png" for i in range(TARGETS)}
    assert all(store.status(f"img {i}.png") == "machine" for i in range(TARGETS))


def test_cancel_keeps_what_is_done_and_a_rerun_finishes(tmp_path, transformers_backend):
    import threading

    folder = tmp_path / "ds"
    style = make_dataset(folder)
    cancel = threading.Event()
    result = caption_dataset(folder, style, transformers_backend, cancel=cancel,
                             progress=lambda p: cancel.set() if p.done >= 2 else None)
    assert len(result.captioned) == 2 and len(result.not_attempted) == TARGETS - 2
    assert result.stopped_because == "Stopped by the user."
    rest = caption_dataset(folder, style, transformers_backend)
    assert sorted(rest.captioned) == sorted(result.not_attempted)


def test_the_server_is_sized_for_the_few_shot_conversation_and_the_gpu_it_shares(tmp_path, monkeypatch):
    """vLLM's settings come from the conversation and the card: a model length that holds every example's image
    and answer (a fixed 4096 refused requests from 6 examples at 512 px), the GPU named as the child must see it
    under CUDA_VISIBLE_DEVICES, and a memory share that leaves what others hold (vLLM's 92 % default refused to
    start beside a loaded Sketch model). The GPU here is a pretend one: torch's answers about it are replaced."""
    import torch

    from blk.caption import server
    from blk.caption.server import ServerConfig, gpu_memory_share, model_length, physical_gpu

    assert model_length(3, 512) == 4096 and model_length(5, 512) == 5120  # 5 × (361 image + 300 answer) + 1024
    assert model_length(9, 1024) == 16384 and model_length(3, 1024, answer_tokens=2000) == 11264

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert physical_gpu(1) == "3" and physical_gpu(0) == "2"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert physical_gpu(1) == "1"

    model = tmp_path / "vlm"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 2**20)  # stands for 16 GB of weights: sizes scaled by 2**14
    gib = 2**30 // 2**14
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30 * gib, 80 * gib))
    share = gpu_memory_share(model, "cuda:0", margin=gib)
    assert share == round(29 / 80, 3)  # what is free, less the margin: not vLLM's 0.92 of the whole card
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(1.5 * gib), 80 * gib))
    with pytest.raises(UserError, match=r"^cuda:0 has 0\.0 GB free; the captioner needs about \d+ GB\. Stop a "
                                        r"training run or another program using the GPU, then caption again\.$"):
        gpu_memory_share(model, "cuda:0", margin=gib)
    command = ServerConfig(model=model, python=tmp_path / "python", gpu_memory_share=0.4,
                           max_model_len=6144).command()
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.4"
    assert command[command.index("--max-model-len") + 1] == "6144"
    assert "--gpu-memory-utilization" not in ServerConfig(model=model, python=tmp_path / "python").command()
    assert server.server_config(model, tmp_path / "python", 6, "cpu", 512).max_model_len == 5120
    (model / "config.json").write_text('{"model_type": "idefics3", "text_config": {"max_position_embeddings": 4096}}')
    assert model_length(9, 1024, model=model) == 4096  # no longer than the model was made for: vLLM refuses
    # on a CPU the KV cache holds one request of that length (Qwen2.5-VL-7B's shape: 28 layers, 4 KV heads of 128)
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl", "num_hidden_layers": 28, '
                                       '"num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584}')
    sized = server.server_config(model, tmp_path / "python", 9, "cpu", 1024)
    assert sized.max_model_len == 16384 and sized.kv_cache_bytes == int(2 * 28 * 4 * 128 * 4 * 16384 * 1.25)
