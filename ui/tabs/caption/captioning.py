"""Caption with a model: backend and server, the style with its few-shot examples, the batch."""

from __future__ import annotations

import gradio as gr

from ui.context import StudioContext

BACKENDS = {
    "vLLM, started by the studio": ("vllm", False),
    "vLLM (or any OpenAI-compatible server) at a URL": ("vllm", True),
    "transformers, in this process (slow, no server)": ("transformers", False),
}
BACKGROUND_NOTE = "Transparent pixels are shown to the model on this background."
CAPTION_MODES = [("missing", "missing"), ("all", "all"), ("images shown in the grid", "selected")]


def _style_fields(style):
    post = style.post
    return (style.system_prompt, style.instruction, style.background, style.image_size, style.sampling.temperature,
            style.sampling.top_p, style.sampling.max_tokens, style.sampling.seed if style.sampling.seed is not None else -1,
            post.trigger, post.trigger_mode, "\n".join(post.strip_openings), post.one_line)


def _examples_table(style) -> list[list[str]]:
    """Numbered from 1, as an artist counts (the "Example #" field takes that number)."""
    return [[str(i), e.image, e.caption] for i, e in enumerate(style.examples, start=1)]


def examples_rows(context: StudioContext, name: str) -> list[list[str]]:
    """The examples table as the dataset's captions read now (after a save, a bulk edit or its undo)."""
    from blk.caption.style import dataset_style
    from blk.errors import UserError

    try:
        return _examples_table(dataset_style(context.captioning.dataset(name))) if name else []
    except UserError:  # a broken style file: choosing the dataset says so
        return gr.update()


def load_style(context: StudioContext, name: str):
    from blk.caption.style import dataset_style
    from blk.errors import UserError

    try:
        style = dataset_style(context.captioning.dataset(name)) if name else None
    except UserError as exc:
        gr.Warning(str(exc))
        style = None
    if style is None:
        from blk.caption.style import CaptionStyle

        style = CaptionStyle()
    return (*_style_fields(style), _examples_table(style))


def preset_names() -> list[str]:
    from pathlib import Path

    return sorted(p.stem for p in (Path(__file__).resolve().parents[3] / "presets").glob("caption-*.yaml"))


def load_preset(name: str):
    from pathlib import Path

    from blk.caption.style import load_style as read

    style = read(Path(__file__).resolve().parents[3] / "presets" / f"{name}.yaml")
    return _style_fields(style)


def save_style(context: StudioContext, name, system_prompt, instruction, background, image_size, temperature, top_p,
               max_tokens, seed, trigger, trigger_mode, openings, one_line) -> str:
    from pydantic import ValidationError

    from blk.caption.style import CaptionStyle, PostProcess, Sampling, dataset_style_path, stored_style
    from blk.caption.style import save_style as write
    from blk.errors import UserError

    try:
        folder = context.captioning.dataset(name)
        style = CaptionStyle(
            name=stored_style(folder).name, system_prompt=system_prompt, instruction=instruction, background=background,
            image_size=int(image_size), examples=stored_style(folder).examples,  # as promoted, not as captions read now
            sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=int(max_tokens),
                              seed=None if int(seed) < 0 else int(seed)),
            post=PostProcess(trigger=trigger, trigger_mode=trigger_mode, one_line=one_line,
                             strip_openings=[line.strip() for line in openings.splitlines() if line.strip()]))
        write(style, dataset_style_path(folder))
    except UserError as exc:
        return f"**{exc}**"
    except ValidationError as exc:
        from blk.yaml_io import first_error

        return f"**{first_error(exc)}**"
    return saved_style_note(style)


def saved_style_note(style) -> str:
    """What was saved, in the words an artist set it with: the examples, the trigger word (which Check and Train's
    sample prompts now use) and the background under transparent pixels."""
    post = style.post
    trigger = (f"trigger word “{post.trigger.strip()}” ({post.trigger_mode}; Check and Train's sample prompts use it)"
               if post.trigger.strip() and post.trigger_mode != "none" else "no trigger word")
    return (f"Style saved with the dataset: {len(style.examples)} example(s), {trigger}, transparent pixels shown "
            f"on {style.background}.")


def example_action(context: StudioContext, name: str, action: str, index: float, image: str):
    """Promote the clicked image's approved caption, or move/drop example number `index` (counted from 1)."""
    from blk.caption.style import drop_example, move_example, promote_example
    from blk.errors import UserError

    try:
        folder = context.captioning.dataset(name)
        if action == "promote":
            if not image:
                raise UserError("Click an image in the grid first; its approved caption becomes an example.")
            style = promote_example(folder, image)
        elif index is None:
            raise UserError("Type the example's number (#) first.")
        elif action == "up":
            style = move_example(folder, int(index) - 1, -1)
        elif action == "down":
            style = move_example(folder, int(index) - 1, +1)
        else:
            style = drop_example(folder, int(index) - 1)
    except UserError as exc:
        gr.Warning(str(exc))
        return gr.update()
    return _examples_table(style)


def default_backend(context: StudioContext) -> str:
    """vLLM started by the studio when its environment is set up; else the transformers backend, which runs
    now (vLLM's first answer would be how to install it)."""
    from blk.caption.server import find_vllm_python
    from blk.errors import UserError

    try:
        find_vllm_python(context.workspace.settings.vllm_python)
    except UserError:
        return list(BACKENDS)[2]
    return list(BACKENDS)[0]


def captioner(context: StudioContext, model: str) -> str:
    """The Model field's captioner. Left empty it is tiny-vlm in demo mode only: elsewhere random words would
    be written into a real dataset as its machine captions."""
    from blk.caption.job import NO_CAPTIONER
    from blk.errors import UserError

    if (model or "").strip():
        return model.strip()
    if context.demo:
        return "tiny-vlm"
    raise UserError(f"{NO_CAPTIONER} Type it in Model.")


def server_action(context: StudioContext, action: str, model: str) -> str:
    from blk.errors import UserError

    try:
        if action == "start":
            name = captioner(context, model)
            freed = context.release_gpu("the captioning server")
            return context.captioning.start_server(name) + (f"\n\n{freed}" if freed else "")
        if action == "stop":
            return context.captioning.stop_server()
        return context.captioning.status()
    except UserError as exc:
        return f"**{exc}**"


def run_batch(context: StudioContext, name, backend_label, model, url, mode, overwrite, concurrency, rows=None):
    """A generator: yields progress lines, then the result."""
    import queue
    import threading

    from blk.caption.job import CaptionJob
    from blk.errors import UserError

    backend, needs_url = BACKENDS[backend_label]
    try:
        context.captioning.dataset(name)
        named = {} if needs_url else {"model": captioner(context, model)}  # a running server has its own
        job = CaptionJob(dataset=name, backend=backend, vllm_url=url.strip() if needs_url else None, **named,
                         mode=mode, overwrite=overwrite,
                         concurrency=int(concurrency), selected=[r["image"] for r in rows or []])
        if mode == "selected" and not job.selected:
            raise UserError("Show some rows in the grid first: this mode captions the images shown in the grid.")
        if needs_url and not job.vllm_url:
            raise UserError("Type the server's URL, e.g. http://127.0.0.1:8000.")
    except UserError as exc:
        yield f"**{exc}**"
        return
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = context.captioning.run(job, progress=updates.put)
        except UserError as exc:
            outcome["error"] = str(exc)
        finally:
            updates.put(None)

    freed = "" if needs_url else context.release_gpu("the captioner")  # a server of yours is on its own
    threading.Thread(target=work, daemon=True).start()
    yield "Preparing the model and the examples…" + (f" {freed}" if freed else "")
    while (update := updates.get()) is not None:
        eta = f", about {update.eta_seconds:.0f} s left" if update.eta_seconds is not None else ""
        yield f"{update.done} / {update.total} captioned — {update.images_per_second:.2f} images/s{eta}"
    if "error" in outcome:
        yield f"**{outcome['error']}**"
        return
    result = outcome["result"]
    lines = [f"**Captioned {len(result.captioned)}**, skipped {len(result.skipped)}, failed {len(result.failed)} "
             f"in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s)."]
    lines += [f"- {reason}" for _, reason in result.failed]
    if result.stopped_because:
        lines.append(f"Stopped early: {result.stopped_because} Finished captions are saved; run again for the rest.")
    yield "\n".join(lines)


def build(context: StudioContext, dataset: gr.Dropdown, selected_image: gr.State, rows_state: gr.State):
    """Returns the Caption button, so that the grid can refresh after a batch."""
    with gr.Row():
        backend = gr.Radio(list(BACKENDS), value=default_backend(context), label="Backend", scale=3)
        model = gr.Textbox(value="tiny-vlm" if context.demo else "", label="Model (folder, cached repo, or tiny-vlm)",
                           placeholder="e.g. /models/Qwen2.5-VL-7B-Instruct", scale=2)
        url = gr.Textbox(label="Server URL (for a server you run)", placeholder="http://127.0.0.1:8000", scale=2)
    with gr.Row():
        start = gr.Button("Start server", size="sm")
        stop = gr.Button("Stop server", size="sm")
        server_status = gr.Markdown(context.captioning.status())
    with gr.Accordion("Caption style (saved with the dataset)", open=False):
        with gr.Row():
            preset = gr.Dropdown(preset_names(), label="Start from a preset", scale=3)
            apply_preset = gr.Button("Load preset", size="sm", scale=1)
        system_prompt = gr.Textbox(label="System prompt (the style guide)", lines=4)
        instruction = gr.Textbox(label="Instruction")
        with gr.Row():
            background = gr.Radio(["grey", "checkerboard", "white", "black"], label="Background under transparency",
                                  info=BACKGROUND_NOTE)
            image_size = gr.Number(label="Image size sent (longest edge, px)", precision=0)
        with gr.Row():
            temperature = gr.Slider(0, 2, step=0.05, label="Temperature")
            top_p = gr.Slider(0.05, 1, step=0.05, label="Top-p")
            max_tokens = gr.Number(label="Max tokens", precision=0)
            seed = gr.Number(label="Seed (-1: random)", precision=0)
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word")
            trigger_mode = gr.Radio(["prefix", "placeholder", "none"], label="Trigger as",
                                    info="prefix: 'word, caption'; placeholder: replaces [trigger]")
            one_line = gr.Checkbox(label="One line")
        openings = gr.Textbox(label="Openings to strip (one per line)", lines=3)
        save = gr.Button("Save style", variant="primary", size="sm")
        style_note = gr.Markdown()
    with gr.Accordion("Few-shot examples", open=True):
        examples = gr.Dataframe(headers=["#", "image", "caption"], interactive=False, wrap=True,
                                elem_id="blk-caption-examples",
                                label="Examples, in the order the model sees them")
        with gr.Row():
            promote = gr.Button("Promote the clicked image (approved caption)", size="sm")
            index = gr.Number(label="Example #", value=1, precision=0, min_width=80)
            up = gr.Button("Move up", size="sm")
            down = gr.Button("Move down", size="sm")
            drop = gr.Button("Drop", size="sm")
    with gr.Row():
        mode = gr.Radio(CAPTION_MODES, value="missing", label="Caption",
                        info="missing: no caption yet; all: also machine captions; "
                             "images shown in the grid: the rows on the grid's page now")
        overwrite = gr.Checkbox(label="Also replace captions a person edited or approved")
        concurrency = gr.Slider(1, 64, value=8, step=1, label="Requests in flight")
    with gr.Row():
        caption_button = gr.Button("Caption", variant="primary")
        cancel = gr.Button("Cancel")
        cancel_note = gr.Markdown(elem_id="blk-caption-cancel-note")
    outcome = gr.Markdown()

    fields = [system_prompt, instruction, background, image_size, temperature, top_p, max_tokens, seed,
              trigger, trigger_mode, openings, one_line]
    dataset.change(lambda n: load_style(context, n), inputs=dataset, outputs=fields + [examples])
    apply_preset.click(load_preset, inputs=preset, outputs=fields)
    style_saved = save.click(lambda n, *f: save_style(context, n, *f), inputs=[dataset] + fields,
                             outputs=style_note, api_name="caption_style_save")
    start.click(lambda m: server_action(context, "start", m), inputs=model, outputs=server_status,
                api_name="caption_server_start")
    stop.click(lambda m: server_action(context, "stop", m), inputs=model, outputs=server_status,
               api_name="caption_server_stop")
    for button, action in ((promote, "promote"), (up, "up"), (down, "down"), (drop, "drop")):
        button.click(lambda n, i, img, action=action: example_action(context, n, action, i, img),
                     inputs=[dataset, index, selected_image], outputs=examples)
    run = caption_button.click(lambda *a: (yield from run_batch(context, *a)),
                               inputs=[dataset, backend, model, url, mode, overwrite, concurrency, rows_state],
                               outputs=outcome, api_name="caption_run")
    caption_button.click(lambda: "", outputs=cancel_note, show_progress="hidden", queue=False)
    run.then(lambda: "", outputs=cancel_note, show_progress="hidden")  # the batch's own status says how it ended
    cancel.click(context.captioning.cancel_batch, outputs=cancel_note, show_progress="hidden")
    return run, style_saved, examples
