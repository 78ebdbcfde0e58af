"""Import gradio without its start-up regeneration of type stubs.

Each time gradio is imported, its component metaclass rewrites the `.pyi` stub
of every component (`gradio.component_meta.create_or_modify_pyi`), parsing each
component's source with `ast`: about 3 of the 5 seconds that `import gradio`
takes on a 2-core CPU, and a write into site-packages at run time. The stubs
only help IDEs and already ship in the wheel. We replace that one function with
a no-op as soon as its module has loaded, before any component class is made.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_TARGET = "gradio.component_meta"


class _SkipStubRegeneration(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec, then step aside
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.create_or_modify_pyi = _no_stubs

        spec.loader.exec_module = exec_module
        return spec


def _no_stubs(*_args, **_kwargs) -> None:
    return None


def install() -> None:
    """Call before the first `import gradio` (ui/__init__ does)."""
    if _TARGET not in sys.modules and not any(isinstance(f, _SkipStubRegeneration) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipStubRegeneration())
