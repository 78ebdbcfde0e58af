"""The Sketch tab's Generate handler with a real context: what the status says about the form."""

import threading

from ui.context import StudioContext
from ui.tabs import sketch


def test_an_empty_prompt_is_drawn_and_said_and_the_seed_field_keeps_a_fixed_seed(shared_workspace, tmp_path):
    """Issue #5 allows an empty prompt; the status says it was empty, so a greyed example is not mistaken for it."""
    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    shown, _, status, seed = sketch.generate(context, threading.Event(), [], "tiny-flux", "  ", "", [], None,
                                             sketch.CUSTOM, 64, 64, 2, None, 4, False, 1, False, False, False,
                                             progress=lambda *a, **k: None)
    assert len(shown) == 1 and "1 image, seed **4**, 64×64" in status
    assert seed == {"__type__": "update"}  # a fixed seed stays as typed
    assert "The prompt was empty" in status
    shown, _, status, seed = sketch.generate(context, threading.Event(), [], "tiny-flux", "a cube", "", [], None,
                                             sketch.CUSTOM, 64, 64, 1, None, 4, True, 2, False, False, False,
                                             progress=lambda *a, **k: None)
    assert len(shown) == 2 and "empty" not in status
    # a random batch shows its first seed: unticking Random seed draws the same batch again
    assert f"2 images, seeds **{seed}, {seed + 1}**" in status, (seed, status)


def test_width_and_height_show_the_budget_size_and_are_typed_only_for_a_custom_size():
    budget, width, height = sketch.size_fields(1.0, "3:2 landscape")
    assert budget["visible"] is True
    assert (width["value"], height["value"]) == (1216, 832) and not width["interactive"] and not height["interactive"]
    assert width["label"] == "Width (from the budget)"
    budget, width, height = sketch.size_fields(0.5, "1:1 square")
    assert (width["value"], height["value"]) == (704, 704)  # ~0.5 MP on the 64 px grid
    budget, width, height = sketch.size_fields(1.0, sketch.CUSTOM)
    assert budget["visible"] is False and width["interactive"] and height["interactive"] and width["label"] == "Width"
    assert "value" not in width and "value" not in height  # the typed size stays
    budget, width, height = sketch.size_fields(1.0, "5:4 unknown")  # an edited form memory: nothing breaks
    assert "value" not in width and width["interactive"] is False


def test_progress_shows_over_the_gallery_not_over_the_seed_field(shared_workspace):
    """Gradio covers every output of a job with its progress; the Seed field is an output (a random batch's seed
    comes back), and "Loading the model… 0.0%" was drawn over it."""
    import gradio as gr

    from ui.tabs import stencil

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    for tab, api_name, gallery in ((sketch, "sketch_generate", "blk-sketch-gallery"),
                                   (stencil, "stencil_generate", "blk-stencil-gallery")):
        with gr.Blocks() as demo:
            tab.build(context)
        config = demo.get_config_file()
        job = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
        labels = {c["id"]: c["props"].get("elem_id") or c["props"].get("label") for c in config["components"]}
        shown_on = [labels[i] for i in job["show_progress_on"]]
        assert shown_on == [gallery]


def test_cancel_stops_the_job_of_its_own_window_only(shared_workspace):
    """With the studio open in two windows, Cancel in one stopped the other's job (one flag per tab): now each
    browser session has its own. Sketch runs for real; the other tabs' Cancel buttons are the same kind."""
    import gradio as gr

    from ui.cancels import SessionCancels
    from ui.tabs import review, stencil, upscale

    context = StudioContext(shared_workspace, demo=True, demo_reason="test")
    with gr.Blocks() as demo:
        sketch.build(context)
    fns = list(demo.fns.values())
    buttons = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    job = next(f for f in fns if f.api_name == "sketch_generate").fn
    cancel = next(f for f in fns if (buttons["blk-sketch-cancel"]._id, "click") in f.targets).fn
    mine, other = gr.Request(session_hash="mine"), gr.Request(session_hash="other")

    def generate(clicked_by):
        def progress(fraction, desc=""):
            if fraction >= 0.5:  # the second of three images begun: the window `clicked_by` clicks Cancel
                cancel(clicked_by)
        shown, _, status, _ = job(mine, [], "tiny-flux", "a cube", "", [], None, sketch.CUSTOM, 64, 64, 2, None, 4,
                                  False, 3, False, False, False, progress=progress)
        return len(shown)

    assert generate(other) == 3  # another window's Cancel: the whole batch
    assert generate(mine) == 1  # this window's: the first image is kept, the batch stops

    # a job waiting in the queue behind another window's: its Cancel is kept for it (it was cleared when the
    # job started, and the job ran to its end); the click arms it, before the queue
    grey = next(f for f in fns if (buttons["blk-sketch-generate"]._id, "click") in f.targets and not f.queue).fn
    grey(mine)
    cancel(mine)  # clicked while waiting
    shown, _, status, _ = job(mine, [], "tiny-flux", "a cube", "", [], None, sketch.CUSTOM, 64, 64, 2, None, 4,
                              False, 3, False, False, False, progress=lambda *a, **k: None)
    assert shown == [] and "ancel" in status, status
    grey(mine)  # the next click: that Cancel is spent
    assert generate(other) == 3

    # a window reloaded while its job runs on unseen; the new window's job waits behind it: Cancel there stops
    # both (it stopped only the waiting one, and the orphan ran on); the idle step after a job that never
    # started (an unreadable input) leaves the window waiting no more
    from ui.cancels import session_ended

    cancels, gone, new = cancel.__self__, gr.Request(session_hash="gone"), gr.Request(session_hash="new")
    seen = []

    def waiting_then_cancel(flag, *a, progress):
        session_ended(gone)
        grey(new)
        cancel(new)
        seen.append(flag.is_set())
    cancels.job(waiting_then_cancel)(gone, progress=None)
    assert seen == [True] and cancels.flag(new).is_set()
    idle = next(f.fn for f in fns if f.fn.__name__ == "idle")  # after Generate's job, however it ended
    idle(new)  # its job never ran
    assert "new" not in cancels._waiting

    # a reload: the old window's session ends while its job runs on; the new window has no job of its own, so
    # its Cancel stops the jobs of windows that are gone (the app's unload handler says which)
    from ui.app import build_app

    reloaded = gr.Request(session_hash="reloaded")

    def reload_then_cancel(fraction, desc=""):
        if fraction >= 0.5:
            session_ended(mine)
            cancel(reloaded)
    shown, *_ = job(mine, [], "tiny-flux", "a cube", "", [], None, sketch.CUSTOM, 64, 64, 2, None, 4, False, 3,
                    False, False, False, progress=reload_then_cancel)
    assert len(shown) == 1
    unload = [f for f in build_app(context).fns.values() if any(t[1] == "unload" for t in f.targets)]
    assert [f.fn for f in unload] == [session_ended]

    for tab, cancel_id in ((stencil, "blk-stencil-cancel"), (review, "blk-review-cancel"),
                           (upscale, "blk-upscale-cancel")):
        with gr.Blocks() as demo:
            tab.build(context)
        button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == cancel_id)
        handler = next(f for f in demo.fns.values() if (button._id, "click") in f.targets).fn
        cancels = handler.__self__
        assert isinstance(cancels, SessionCancels), cancel_id
        handler(other)
        assert cancels.flag(other).is_set() and not cancels.flag(mine).is_set(), cancel_id
