"""Review tab: a run's checkpoints side by side — a labelled grid, a slider, and blind A/B picks.

Rows are checkpoints (× strengths), columns prompts × seeds. Cells are cached
by the engine (`blk.generate.review`), so re-opening a grid is instant; a grid
can be cancelled, keeping the cells made so far. Generation runs on the
workspace's device and on the pipeline Sketch loaded, with its memory options.
The blind A/B tally is saved with the run; the preferred checkpoint can be
pinned (its own run's pruning keeps it) and exported with a clear name.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import gradio as gr
import numpy as np

from blk.generate.review import DEFAULT_SEED
from ui.busy import click_while_busy
from ui.cancels import SessionCancels
from ui.context import StudioContext


def run_choices(context: StudioContext) -> list[str]:
    return sorted((p.parent.name for p in context.workspace.runs.glob("*/checkpoints") if any(p.glob("step-*"))),
                  key=lambda name: -(context.workspace.runs / name).stat().st_mtime)


def on_load(context: StudioContext):
    """A freshly loaded page has the newest run chosen (as Train does), so its checkpoints show at once."""
    runs = run_choices(context)
    return gr.Dropdown(choices=runs, value=runs[0] if runs else None)


def choose_newest_if_none(context: StudioContext, run, extra=None):
    """When the tab is opened with no run chosen (there was none when the page loaded; one was trained since),
    the newest is chosen, as on page load; a run the artist chose stays, and so does a review of loose LoRA
    files alone (no run, other files chosen)."""
    if run or extra:
        return gr.update()
    runs = run_choices(context)
    return gr.Dropdown(choices=runs, value=runs[0]) if runs else gr.update()


def _run_dir(context: StudioContext, run: str) -> Path | None:
    """The chosen run's folder (None: no run, other LoRA files only); a run removed while the tab was open (its name
    still a choice) is a sentence: its review files made a ghost run the Train tab listed as "unknown"."""
    from blk.train.process import run_folder

    return run_folder(context.workspace, run) if run else None


# A and B may be the base model without a LoRA: "does the LoRA do anything?", and the only comparison a run with
# one checkpoint has (its A was left empty: "Choose checkpoints A and B").
BASE = "(base model)"
BASE_LABEL = "base (no LoRA)"  # as the grid's base row reads
DEFAULT_STRENGTH = 1.0  # what an empty Strengths field means (the note says so); an empty Seeds: `default_seed`


def pair_choices(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A's and B's choices: the base model, then the checkpoints and files."""
    return [(BASE_LABEL, BASE)] + choices


def row_for(value: str, scale: float):
    """The grid row that draws A or B: the base model alone, or the LoRA at `scale`."""
    from blk.generate.review import Row

    return Row(None if value == BASE else Path(value), scale)


def loras_of(*values: str) -> list[str]:
    """A's and B's LoRA files, for the form's checks (the base model is none)."""
    return [value for value in values if value and value != BASE]


def label(context: StudioContext, run: str, path) -> str:
    """The LoRA's name everywhere in Review (rows, A and B, the blind tally), as the grid writes it: "step 8"
    for the run's checkpoint, "RUN/step 8" for another run's, any other file by its path in the workspace."""
    from blk.generate.review import checkpoint_run, review_label
    from blk.train.pins import checkpoint_step

    if path == BASE:
        return BASE_LABEL
    path = Path(path)
    name = review_label(path, _run_dir(context, run), context.workspace)  # unique, ends with the file's name
    if checkpoint_run(path) is None:
        return name
    return name[:-len(path.name)] + f"step {checkpoint_step(path)}"


def checkpoint_choices(context: StudioContext, run: str, extra: list[str]) -> list[tuple[str, str]]:
    """(label, path): the run's checkpoints by step, then the extra LoRA files by a unique label (confined)."""
    from blk.train.pins import pinned_steps, run_checkpoints

    choices = []
    if run:
        folder = _run_dir(context, run)
        pins = pinned_steps(folder)
        choices = [(label(context, run, path) + (" (pinned)" if step in pins else ""), str(path))
                   for step, path in run_checkpoints(folder)]
    for path in (context.workspace.confine(p) for p in extra or []):
        if str(path) not in {value for _, value in choices}:
            choices.append((label(context, run, path), str(path)))
    return choices


def on_run(context: StudioContext, run: str, extra: list[str]):
    """Defaults from the run: its model, sample prompts (the first also in Side by side's Prompt), seed (in the
    grid's Seeds and Side by side's Seed: a pair matches a grid cell and the run's samples) and size; its newest
    checkpoints selected.

    Returns the form's updates, the keep-picker's choices, and a status line
    (empty, or why the run or a file was refused).
    """
    from blk.errors import UserError
    from blk.generate.review import run_review_defaults

    if not run and not extra:  # nothing chosen: the form stays (a passing empty value cleared A and B)
        return (gr.update(),) * 13
    try:
        choices = checkpoint_choices(context, run, extra)
        run_dir = _run_dir(context, run)
        defaults = run_review_defaults(run_dir) if run_dir is not None else None
    except UserError as exc:
        return (gr.update(),) * 12 + (f"**{exc}**",)
    paths = [path for _, path in choices]
    pickers = (gr.Dropdown(choices=pair_choices(choices), value=paths[-2] if len(paths) > 1 else BASE if paths else None),
               gr.Dropdown(choices=pair_choices(choices), value=paths[-1] if paths else None),
               gr.Dropdown(choices=choices))
    if defaults is None:
        return (gr.CheckboxGroup(choices=choices, value=paths),) + (gr.update(),) * 7 + pickers + (gr.update(), "")
    d = defaults
    return (gr.CheckboxGroup(choices=choices, value=paths[-4:]), d["model"], "\n".join(d["prompts"]),
            d["prompts"][0] if d["prompts"] else "", str(d["seed"]), d["size"], d["steps"], d["guidance"]
            ) + pickers + (int(d["seed"]), "")


def default_seed(context: StudioContext, run) -> tuple[int, str]:
    """(the seed an empty Seeds field means, how the note names it): the run's sample seed, as its samples and
    Side by side use; DEFAULT_SEED without a readable run."""
    from blk.errors import UserError
    from blk.generate.review import run_review_defaults

    try:
        folder = _run_dir(context, run)
        if folder is not None and (folder / "config.yaml").exists():
            return int(run_review_defaults(folder)["seed"]), "the run's sample seed"
    except (UserError, OSError, ValueError, KeyError):
        pass
    return DEFAULT_SEED, ""


def spec_from_form(context: StudioContext, checkpoints, model, prompts, seeds, scales, include_base, size, steps,
                   guidance, empty_seeds: int = DEFAULT_SEED):
    from blk.errors import UserError
    from blk.generate.review import GridSpec, parse_seeds, parse_strengths
    from blk.models.device import MemoryOptions

    seed_list = parse_seeds(seeds) or [empty_seeds]
    scale_list = parse_strengths(scales) or [DEFAULT_STRENGTH]
    if not (model or "").strip():  # a dropdown cleared by hand sends nothing
        raise UserError("Choose a base model.")
    side = int(size or 1024)
    settings = context.workspace.settings
    return GridSpec(model=model.strip(), checkpoints=[context.workspace.confine(p) for p in checkpoints or []],
                    # repeats dropped, as of seeds and strengths: a repeated line was a second grid column and
                    # a second blind pair of the same case
                    prompts=list(dict.fromkeys(line.strip() for line in (prompts or "").splitlines() if line.strip())),
                    seeds=seed_list, scales=scale_list, include_base=bool(include_base), width=side, height=side,
                    steps=int(steps) if steps else None,
                    guidance=None if guidance in (None, "") else float(guidance),
                    # Sketch's defaults, for when Sketch has not loaded this model yet (else its options are reused)
                    memory=MemoryOptions(compile=settings.compile, attention=settings.attention),
                    device=settings.device)


def make_grid(context: StudioContext, run, *form, cancel: threading.Event | None = None, progress=gr.Progress()):
    """The grid, its PNG and a status line; a cancel (the event set) keeps the cells made so far in the cache."""
    from blk.errors import UserError
    from blk.generate.review import Reviewer, keep_grid, review_folder

    seed, whose = default_seed(context, run)
    try:
        spec = spec_from_form(context, *form, empty_seeds=seed)
        folder = review_folder(context.workspace, _run_dir(context, run))
        result = Reviewer(context.sketcher).grid(
            spec, folder, progress=lambda done, total: progress(done / total, desc=f"cell {int(done)}/{total}"),
            cancel=cancel)
        path, written = keep_grid(result, spec, folder / "grids")  # an unchanged grid is not written again
    except UserError as exc:
        return gr.update(), gr.update(), f"**{exc}**"  # the last grid stays on screen under the refusal
    status = (f"{len(result.row_labels)} rows × {len(result.column_labels)} columns — {result.generated} generated, "
              f"{result.cached} from the cache." + defaults_said(form[3], form[4], seed, whose) +  # form: checkpoints…
              # the path last, on its own line: a full stop after it went to a line of its own when narrow
              (f"  \nSaved as `{path}`" if written else f"  \nUnchanged: already saved as `{path}`"))
    return str(path), str(path), status


def defaults_said(seeds, strengths, seed: int = DEFAULT_SEED, whose: str = "") -> str:
    """An empty Seeds or Strengths field is filled by a default; the note says which, as the field stays empty."""
    from blk.generate.review import parse_seeds, parse_strengths

    named = f" ({whose})" if whose else ""
    said = ([f"No seeds given: seed {seed}{named}."] if not parse_seeds(seeds) else []) + (
        [f"No strengths given: strength {DEFAULT_STRENGTH:g}."] if not parse_strengths(strengths) else [])
    return "".join(" " + sentence for sentence in said)


def _said(prompt: str, limit: int = 60) -> str:
    """A prompt as a note quotes it: shortened, Markdown's marks escaped; "empty prompt" when there is none."""
    import re

    if not prompt:
        return "empty prompt"
    short = prompt if len(prompt) <= limit else prompt[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"  # whole words
    return "“" + re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", short) + "”"


def compare(context: StudioContext, run, a, b, prompt, seed, *form, progress=gr.Progress()):
    """The same prompt and seed through checkpoints A and B; the note says which (an empty prompt is allowed)."""
    from blk.errors import UserError
    from blk.generate.review import Column, Reviewer, review_folder

    if not a or not b:
        return None, "Choose checkpoints A and B."
    try:
        spec = spec_from_form(context, loras_of(a, b), *form)
        folder = review_folder(context.workspace, _run_dir(context, run))
        reviewer = Reviewer(context.sketcher)
        column = Column((prompt or "").strip(), one_seed(seed))  # stripped as the grid's prompts: same cells
        names = label(context, run, a), label(context, run, b)
        progress(0, desc="Generating A…")
        left, _ = reviewer.cell(spec, row_for(a, spec.scales[-1]), column, folder)
        progress(0.5, desc="Generating B…")
        right, _ = reviewer.cell(spec, row_for(b, spec.scales[-1]), column, folder)
    except UserError as exc:
        return None, f"**{exc}**"
    return (str(left), str(right)), (f"Left: **A** ({names[0]}) · right: **B** ({names[1]})"
                                     f" — {_said(column.prompt)}, seed {column.seed}.")


def one_seed(value) -> int:
    """Side by side's Seed, in the grid's range (0 … MAX_SEED): -1 drew a pair matching no grid cell (Sketch's
    "random" is no seed to compare at), a huge one failed deep in generation."""
    from blk.errors import UserError
    from blk.generate.sketch import MAX_SEED

    seed = int(value or 0)
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"Seed is a whole number from 0 to {MAX_SEED}; {seed} is not.")
    return seed


def blind_setup(context: StudioContext, run, a, b, prompts, seeds) -> str:
    """What a blind test will compare, on its own tab: A and B are chosen under *Side by side*, out of sight."""
    from blk.errors import UserError

    if not a or not b:
        return "Choose **A** and **B** under *Side by side*: a blind test shows pairs of those two, names hidden."
    try:
        a_name, b_name = label(context, run, a), label(context, run, b)
    except UserError as exc:
        return f"**{exc}**"
    if a == b:
        return f"A and B are both **{a_name}**: choose two different ones under *Side by side*."
    count = len(dict.fromkeys(line.strip() for line in (prompts or "").splitlines() if line.strip())) or 1
    from blk.generate.review import parse_seeds

    try:
        seed_count = len(parse_seeds(seeds)) or 1
    except UserError as exc:
        return f"**{exc}**"
    return (f"Pairs of **{a_name}** (A) and **{b_name}** (B), chosen under *Side by side*, for the prompts and "
            f"seeds at left: {count} prompt"
            f"{'s' if count > 1 else ''} × {seed_count} seed{'s' if seed_count > 1 else ''} = {count * seed_count} "
            f"pair{'s' if count * seed_count > 1 else ''}, names hidden and sides balanced. The tally is saved with "
            f"the run.")


def start_blind(context: StudioContext, run, a, b, *form):
    """Pairs to judge, A's side hidden; the first pair is shown (or why it could not be: a pick click retries)."""
    from blk.errors import UserError
    from blk.generate.blind import blind_pairs

    if not a or not b or a == b:
        return None, None, None, "Choose two different checkpoints as A and B."
    try:
        spec = spec_from_form(context, loras_of(a, b), *form, empty_seeds=default_seed(context, run)[0])
        _run_dir(context, run)  # a run removed meanwhile: said before the first pair
    except UserError as exc:
        return None, None, None, f"**{exc}**"
    pairs = blind_pairs(spec.prompts or [""], spec.seeds)
    # the run is the test's own: choosing another run in the dropdown meanwhile split one test's tally over two
    state = {"a": a, "b": b, "pairs": pairs, "index": 0, "shown": None, "form": list(form), "run": run,
             "test": secrets.token_hex(8)}
    return show_next(context, run, state)


def show_next(context: StudioContext, run, state):
    """(state, left, right, note) for the current pair; `state["shown"]` is its index once it is on screen, so
    that a pick is only ever recorded for a pair the curator saw, and only once."""
    from blk.errors import UserError

    try:
        left, right, note = show_pair(context, run, state)
    except UserError as exc:
        return ({**state, "shown": None}, None, None,
                f"**{exc}** Press a pick button to try pair {state['index'] + 1} again; nothing was recorded for it.")
    return {**state, "shown": state["index"]}, left, right, note


def show_pair(context: StudioContext, run, state):
    """The pair's two images as pixels only (PIL images, which Gradio saves afresh under a name of their content):
    the cached cells' files named their LoRA in their PNG text and by the same names Side by side shows."""
    from PIL import Image

    from blk.generate.review import Column, Reviewer, review_folder

    pair = state["pairs"][state["index"]]
    spec = spec_from_form(context, loras_of(state["a"], state["b"]), *state["form"],
                          empty_seeds=default_seed(context, run)[0])
    folder = review_folder(context.workspace, _run_dir(context, run))
    reviewer = Reviewer(context.sketcher)
    column = Column(pair.prompt, pair.seed)
    a_cell, _ = reviewer.cell(spec, row_for(state["a"], spec.scales[-1]), column, folder)
    b_cell, _ = reviewer.cell(spec, row_for(state["b"], spec.scales[-1]), column, folder)
    left, right = (a_cell, b_cell) if pair.left_is_a else (b_cell, a_cell)
    note = f"Pair {state['index'] + 1} of {len(state['pairs'])} — “{pair.prompt}”, seed {pair.seed}. Which is better?"
    with Image.open(left) as shown_left, Image.open(right) as shown_right:
        return Image.fromarray(np.asarray(shown_left)), Image.fromarray(np.asarray(shown_right)), note


def pick(context: StudioContext, run, state, side: str):
    """Record the pick; show the next pair, or reveal the tally when all are judged.

    When the current pair failed to show, the click shows it again and records nothing. The tally is
    saved under file names unique within the review (same-named checkpoints of two runs stay apart) and
    said with the review's labels.
    """
    from dataclasses import replace

    from blk.errors import UserError
    from blk.generate.blind import record_pick
    from blk.generate.review import review_folder, review_label

    if state and state.get("tally"):  # finished: the tally stays on screen, nothing more is recorded
        return (state, gr.update(), gr.update(),
                f"This blind test is finished. {state['tally']} Start a new test to judge more pairs.", gr.update())
    if not state or state["index"] >= len(state["pairs"]):
        return state, gr.update(), gr.update(), "Start a blind test first.", gr.update()
    run = state.get("run", run)  # the run the test began with
    if state.get("shown") != state["index"]:
        return show_next(context, run, state) + (gr.update(),)
    judged = (state.get("test"), state["index"])  # a test begun by `start_blind` has its token
    with _JUDGING:  # a second button clicked before the next pair showed reads the same state: one pick a pair
        if judged[0] and judged in _JUDGED:
            return (gr.update(),) * 5
        _JUDGED.add(judged)
    try:
        run_dir = _run_dir(context, run)
        folder = review_folder(context.workspace, run_dir)
        a, b = (BASE_LABEL if state[k] == BASE else review_label(Path(state[k]), run_dir, context.workspace)
                for k in ("a", "b"))
        tally = record_pick(folder, a, b, state["pairs"][state["index"]], side)
        shown = replace(tally, a=label(context, run, state["a"]), b=label(context, run, state["b"]))
    except UserError as exc:
        with _JUDGING:
            _JUDGED.discard(judged)  # not recorded: the pair can be picked again
        return state, gr.update(), gr.update(), f"**{exc}**", gr.update()
    state = {**state, "index": state["index"] + 1, "shown": None}
    if state["index"] < len(state["pairs"]):
        return show_next(context, run, state) + (gr.update(),)
    leader = tally.leader()
    winner = {a: state["a"], b: state["b"]}[leader] if leader else None
    chosen = winner if winner and winner != BASE else gr.update()  # the base model is no checkpoint to keep
    said = f"Tally so far, saved with the run: {shown.sentence()}"
    return {**state, "tally": said}, gr.update(), gr.update(), f"Done. {said}", chosen  # the last pair stays in view


_JUDGING = threading.Lock()
_JUDGED: set[tuple] = set()  # (test, pair index) of the picks recorded in this app


def pick_buttons(state):
    """The three pick buttons, clickable only while a blind test has pairs left to judge (before a test and
    after its tally they only answered with a sentence)."""
    judging = bool(state) and not state.get("tally") and state["index"] < len(state["pairs"])
    return tuple(gr.Button(interactive=judging) for _ in range(3))


def keep(context: StudioContext, run, checkpoint, action: str):
    """Pin a checkpoint in its own run (which may not be the run picked above: "Other LoRA files" can hold
    another run's checkpoints), or export it."""
    from blk.errors import UserError
    from blk.generate.review import checkpoint_run
    from blk.train.pins import checkpoint_step, export_checkpoint, pin

    if not checkpoint:
        return "Choose a checkpoint."
    try:
        _run_dir(context, run)  # a run name from the browser is confined even though the pin goes by the file
        path = context.workspace.confine(checkpoint)
        if action == "pin":
            owner = checkpoint_run(path)
            if owner is None or not (owner / "config.yaml").is_file():
                return "Only a run's checkpoints can be pinned."
            pin(owner, checkpoint_step(path))
            return f"Pinned step {checkpoint_step(path)} of run {owner.name}: the run's pruning keeps it."
        target = export_checkpoint(path, context.workspace.outputs("loras"))
        return f"Exported as `{target}`."
    except UserError as exc:
        return f"**{exc}**"


def pin_and_relabel(context: StudioContext, run, checkpoint, extra):
    """Pin, then relabel the checkpoint lists at once ("step N (pinned)"); the chosen values stay."""
    from blk.errors import UserError

    note = keep(context, run, checkpoint, "pin")
    try:
        choices = checkpoint_choices(context, run, extra)
    except UserError:  # the form's run or files were refused: `keep` said why, the lists stay as they are
        return (note,) + (gr.update(),) * 4
    return (note, gr.CheckboxGroup(choices=choices), gr.Dropdown(choices=pair_choices(choices)),
            gr.Dropdown(choices=pair_choices(choices)), gr.Dropdown(choices=choices))


def build(context: StudioContext) -> dict:
    from blk.generate.library import available_loras
    from ui.tabs.sketch import model_defaults

    default_steps, default_guidance = model_defaults(context, context.default_model())
    cancels = SessionCancels()  # set by the grid's Cancel button; the grid stops before its next step
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Dropdown(run_choices(context), label="Run", scale=4, value=None,
                                  elem_id="blk-review-run", elem_classes="blk-run-name")
                refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
            run_note = gr.Markdown()
            extra = gr.Dropdown([(label, str(path)) for label, path in available_loras(context.workspace)],
                                multiselect=True, label="Other LoRA files (optional)")
            checkpoints = gr.CheckboxGroup([], label="Checkpoints (rows)", elem_id="blk-review-checkpoints")
            # the models found here (of the right kind), or any name or path typed in; a run picked sets its own
            model = gr.Dropdown(context.base_models(), value=context.default_model(), label="Base model",
                                allow_custom_value=True)
            prompts = gr.Textbox(label="Prompts (columns, one per line)", lines=3)
            with gr.Row():
                seeds = gr.Textbox(str(DEFAULT_SEED), label="Seeds", elem_id="blk-review-seeds")
                scales = gr.Textbox(f"{DEFAULT_STRENGTH:g}", label="Strengths (-1 to 2)", placeholder="e.g. 0.6, 0.8, 1.0")
                include_base = gr.Checkbox(label="Include the base model (a row without LoRA)")
            with gr.Row():
                size = gr.Number(1024, label="Size (px, square)", precision=0)
                steps = gr.Number(default_steps, label="Steps", precision=0)
                guidance = gr.Number(default_guidance, label="Guidance")
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("Grid"):
                    with gr.Row():
                        grid_button = gr.Button("Make the grid", variant="primary", elem_id="blk-review-grid")
                        grid_cancel = gr.Button("Cancel", elem_id="blk-review-cancel")
                    grid_status = gr.Markdown(elem_id="blk-review-status")
                    grid = gr.Image(label="Grid", type="filepath", buttons=["download", "fullscreen"],
                                    elem_id="blk-review-image")
                    grid_file = gr.File(label="Grid PNG")
                with gr.Tab("Side by side"):
                    with gr.Row():
                        a = gr.Dropdown([], label="A")
                        b = gr.Dropdown([], label="B")
                    with gr.Row():
                        prompt = gr.Textbox(label="Prompt", scale=3)
                        seed = gr.Number(1, label="Seed", precision=0)
                    compare_button = gr.Button("Compare", elem_id="blk-review-compare")
                    slider = gr.ImageSlider(label="A | B", type="filepath", buttons=["fullscreen"], max_height=700)
                    compare_note = gr.Markdown()
                with gr.Tab("Blind A/B"):
                    blind_setup_note = gr.Markdown(blind_setup(context, None, None, None, "", "1"),
                                                   elem_id="blk-blind-setup")  # who A and B are, live
                    blind_button = gr.Button("Start a blind test")
                    blind_note = gr.Markdown()
                    with gr.Row():
                        # shown at one size, filling their halves: a small pair was judged at its own few pixels
                        left = gr.Image(label="Left", type="filepath", format="png", buttons=["fullscreen"],
                                        elem_id="blk-blind-left",
                                        elem_classes="blk-judge")
                        right = gr.Image(label="Right", type="filepath", format="png", buttons=["fullscreen"],
                                         elem_id="blk-blind-right", elem_classes="blk-judge")
                    with gr.Row():
                        pick_left = gr.Button("Left is better", interactive=False)  # while judging: `pick_buttons`
                        pick_tie = gr.Button("Same", interactive=False)
                        pick_right = gr.Button("Right is better", interactive=False)
                    blind_state = gr.State(None)
            with gr.Row():
                chosen = gr.Dropdown([], label="Checkpoint to keep", scale=3)
                pin_button = gr.Button("Pin", size="sm", scale=0, min_width=60)
                export_button = gr.Button("Export", size="sm", scale=0, min_width=70)
            keep_note = gr.Markdown()

    # the model's defaults when the artist picks or types a model, not when a picked run sets it
    model.input(lambda name: model_defaults(context, name), inputs=model, outputs=[steps, guidance])
    form = [model, prompts, seeds, scales, include_base, size, steps, guidance]
    run_outputs = [checkpoints, model, prompts, prompt, seeds, size, steps, guidance, a, b, chosen, seed, run_note]

    run.change(lambda r, e: on_run(context, r, e), inputs=[run, extra], outputs=run_outputs)
    extra.change(lambda r, e: on_run(context, r, e), inputs=[run, extra], outputs=run_outputs)
    refresh.click(lambda r, e: (gr.Dropdown(choices=run_choices(context)),) + on_run(context, r, e),
                  inputs=[run, extra], outputs=[run] + run_outputs)
    click_while_busy(grid_button, "Making the grid…",
                     cancels.job(lambda cancel, r, *f, progress: make_grid(context, r, *f, cancel=cancel,
                                                                                 progress=progress)),
                     inputs=[run, checkpoints] + form, outputs=[grid, grid_file, grid_status], api_name="review_grid")
    grid_cancel.click(cancels.cancel, queue=False)
    click_while_busy(compare_button, "Comparing…",
                     lambda r, a_, b_, p, s, *f, progress=gr.Progress(): compare(context, r, a_, b_, p, s, *f,
                                                                                 progress=progress),
                     inputs=[run, a, b, prompt, seed] + form, outputs=[slider, compare_note])
    gr.on([a.change, b.change, prompts.change, seeds.change],
          lambda r, a_, b_, p, s_: blind_setup(context, r, a_, b_, p, s_), inputs=[run, a, b, prompts, seeds],
          outputs=blind_setup_note, show_progress="hidden")
    picks = [pick_left, pick_tie, pick_right]
    blind_button.click(lambda r, a_, b_, *f: start_blind(context, r, a_, b_, *f), inputs=[run, a, b] + form,
                       outputs=[blind_state, left, right, blind_note]
                       ).then(pick_buttons, inputs=blind_state, outputs=picks, show_progress="hidden")
    for button, side in ((pick_left, "left"), (pick_right, "right"), (pick_tie, "tie")):
        # all three greyed at once and one queue for the three: a second click while the next pair was made
        # read the same state and recorded a second pick for the pair on screen
        greyed = button.click(lambda: tuple(gr.Button(interactive=False) for _ in picks), outputs=picks,
                              queue=False, show_progress="hidden")
        judged = greyed.then(lambda r, st, side=side: pick(context, r, st, side), inputs=[run, blind_state],
                             outputs=[blind_state, left, right, blind_note, chosen], concurrency_id="blk-blind-pick")
        judged.then(pick_buttons, inputs=blind_state, outputs=picks, show_progress="hidden")
        judged.failure(pick_buttons, inputs=blind_state, outputs=picks, show_progress="hidden")
    pin_button.click(lambda r, c, e: pin_and_relabel(context, r, c, e), inputs=[run, chosen, extra],
                     outputs=[keep_note, checkpoints, a, b, chosen])
    export_button.click(lambda r, c: keep(context, r, c, "export"), inputs=[run, chosen], outputs=keep_note)
    gr.on(None, lambda: on_load(context), outputs=run, show_progress="hidden")  # no triggers: on each page load
    on_show = (lambda: (gr.Dropdown(choices=run_choices(context)),
                        gr.Dropdown(choices=[(label, str(path)) for label, path in available_loras(context.workspace)]),
                        gr.Dropdown(choices=context.base_models())),
               [run, extra, model])
    # opening the tab also chooses the newest run when none is chosen (`ui.app` wires it to the tab's select)
    return {"on_show": on_show, "on_open": (lambda r, e: choose_newest_if_none(context, r, e), [run, extra], run)}
