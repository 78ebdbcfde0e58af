"""House rules that keep the code in shape: the engine never imports gradio, the UI holds no model logic,
and the app starts without loading torch."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

MODEL_LIBRARIES = {"torch", "diffusers", "transformers", "peft", "safetensors", "optimum", "spandrel", "accelerate"}


def imported_modules(folder: Path):
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield path, node.module.split(".")[0]


def test_top_level_layout():
    for name in ("app.py", "blk", "ui", "presets", "requirements.txt", "tests", "README.md", "bench", ".ci/run"):
        assert (ROOT / name).exists(), name


def test_engine_never_imports_gradio():
    offenders = [str(p) for p, module in imported_modules(ROOT / "blk") if module in ("gradio", "gradio_client", "ui")]
    assert offenders == []
    code = ("import importlib, pkgutil, sys, blk\n"
            "for m in pkgutil.walk_packages(blk.__path__, 'blk.'):\n"
            "    if m.name != 'blk.__main__': importlib.import_module(m.name)\n"
            "assert 'gradio' not in sys.modules, 'gradio was imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_ui_holds_no_model_logic():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for p, m in imported_modules(ROOT / "ui") if m in MODEL_LIBRARIES]
    assert offenders == []


def test_building_the_app_loads_no_heavy_library(tmp_path):
    code = ("import sys, blk\n"
            "from blk.workspace import Workspace\n"
            "from ui.app import build_app\n"
            "from ui.context import StudioContext\n"
            f"build_app(StudioContext(Workspace({str(tmp_path)!r}), True, 'test.'))\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_importing_blk_makes_the_process_offline():
    code = ("import os, blk\n"
            "assert os.environ['HF_HUB_OFFLINE'] == '1' and os.environ['GRADIO_ANALYTICS_ENABLED'] == 'False'\n"
            "assert os.environ['HF_HUB_DISABLE_TELEMETRY'] == '1' and os.environ['DO_NOT_TRACK'] == '1'\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "0", "GRADIO_ANALYTICS_ENABLED": "True"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60, env=env)


def test_gradio_imports_without_rewriting_its_stubs():
    code = ("import ui, gradio, gradio.component_meta as meta\n"
            "assert meta.create_or_modify_pyi.__name__ == '_no_stubs'\n"
            "import gradio.blocks_events as events\n"
            "assert events.create_or_modify_pyi.__name__ == '_no_stubs'\n"
            "assert gradio.Textbox(value='x').value == 'x'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
