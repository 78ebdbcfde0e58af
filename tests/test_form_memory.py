"""Sketch's and Stencil's forms remembered in the browser: what is kept, and what comes back on load."""

import gradio as gr

from ui.context import StudioContext
from ui.form_memory import remembered, restored

KEEP = {"__type__": "update"}  # no change to the field


def test_the_seed_is_kept_only_without_random_seed_and_empty_fields_keep_the_last_value():
    assert remembered({"prompt": "a cube", "seed": 7, "random_seed": True}) == {"prompt": "a cube",
                                                                              "random_seed": True}
    assert remembered({"seed": 7, "random_seed": False}) == {"seed": 7, "random_seed": False}
    # a field the page has not drawn yet comes as None: the value kept before stays
    assert remembered({"prompt": None, "steps": 3}, {"prompt": "a cube", "steps": 4}) == {"prompt": "a cube",
                                                                                        "steps": 3}
    # switching "Random seed" on forgets a seed kept before
    assert remembered({"random_seed": True}, {"seed": 7, "random_seed": False}) == {"random_seed": True}


def test_restore_gives_back_valid_values_and_drops_vanished_or_outside_loras(workspace, tmp_path):
    context = StudioContext(workspace, demo=True, demo_reason="test")
    kept_lora = workspace.models / "loras" / "ink.safetensors"
    kept_lora.parent.mkdir(parents=True, exist_ok=True)
    kept_lora.write_bytes(b"lora")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"lora")
    fields = {"prompt": gr.Textbox(), "steps": gr.Number(4, precision=0), "aspect": gr.Dropdown(["1:1", "3:2"]),
              "model": gr.Dropdown(["tiny-flux"], allow_custom_value=True), "random_seed": gr.Checkbox(True),
              "count": gr.Slider(1, 8, value=1, step=1), "negative": gr.Textbox(), "loras": gr.State([])}
    saved = {"prompt": "a cube", "steps": 2, "aspect": "3:2", "model": "my-model", "random_seed": "yes",
             "count": 99, "unknown": 1,
             "loras": [[str(kept_lora), 0.7], [str(workspace.models / "loras" / "gone.safetensors"), 1.0],
                       [str(outside), 1.0], ["../../etc/passwd", 1.0], "junk", [str(kept_lora), 0.2]]}
    assert restored(context, saved, fields) == ["a cube", 2, "3:2", "my-model", KEEP, KEEP, KEEP,
                                                [[str(kept_lora), 0.7]]]
    assert restored(context, {"aspect": "16:9", "steps": "2", "prompt": 3}, fields)[:3] == [KEEP] * 3  # no fit
    assert restored(context, None, fields) == [KEEP] * len(fields)  # nothing kept yet: the defaults stay


def test_form_memory_is_its_own_module_that_sketch_and_stencil_share(workspace):
    """Stencil takes form memory from ui.form_memory, not from the Sketch tab, and both tabs wire it the same way:
    one BrowserState per form, under its own storage key."""
    import ast
    from pathlib import Path

    from ui import form_memory
    from ui.tabs import sketch, stencil

    assert sketch.remember_form is stencil.remember_form is form_memory.remember_form
    assert not hasattr(sketch, "remembered") and not hasattr(sketch, "restored")  # moved, not copied
    source = Path(stencil.__file__).read_text(encoding="utf-8")
    from_sketch = [name.name for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.ImportFrom) and node.module == "ui.tabs.sketch" for name in node.names]
    assert "remember_form" not in from_sketch
    module = ast.parse(Path(form_memory.__file__).read_text(encoding="utf-8"))
    assert "localStorage" in ast.get_docstring(module)
    assert not [node for node in ast.walk(module) if isinstance(node, ast.ImportFrom) and
                (node.module or "").startswith("ui.tabs")]  # no tab's code to load

    context = StudioContext(workspace, demo=True, demo_reason="test")
    with gr.Blocks() as demo:
        sketch.build(context)
        stencil.build(context)
    keys = sorted(block.storage_key for block in demo.blocks.values() if isinstance(block, gr.BrowserState))
    assert keys == ["blk-sketch-form", "blk-stencil-form"]
