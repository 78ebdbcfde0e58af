"""Compiling an upscaling network (an option of a job: `EsrganJob.compile`, the diffusion path's
`MemoryOptions.compile` for its enlargement): `torch.compile` on the network's repeated block.

Why: an RRDB network (Real-ESRGAN) spends much of its time outside its convolutions — each dense block
concatenates its growing feature maps four times and applies LeakyReLU and a residual sum as separate
kernels. Inductor fuses those into the kernels around the convolutions. On a 2-core CPU the x4plus
shapes (64 features) run about 1.1× faster; on a GPU, where those kernels are memory-bound, the gain is
what `bench/upscale.py --compiled` measures.

Regional, as the Sketch tab compiles a denoiser (`blk.models.speed`): the block that repeats (RRDB's 23
`RRDB`s, SwinIR's residual groups) is compiled once and every instance shares that graph, so compiling
costs seconds, not the whole network's minutes. A network without such a block is compiled whole.

Shapes: a graph is made for one tile shape. The tiler gives tiles of one size per pass, and
`StableBatch` pads a short last batch to the batch size the graph was made for, so a job compiles once
per tile size (the first tiles are slower; an out-of-memory halving compiles again).
"""

from __future__ import annotations

from collections import defaultdict

MIN_REPEATS = 3  # instances of one block class before it counts as "the repeated block"
MIN_SHARE = 0.5  # of the network's parameters the repeated block must hold; else the network is compiled whole


def repeated_blocks(model) -> list:
    """The instances of `model`'s repeated block: of the classes defined outside torch.nn that occur at least
    `MIN_REPEATS` times, the one holding the most parameters in all (on a tie, the larger block: RRDB over
    the dense blocks inside it). Empty when no such class holds `MIN_SHARE` of the parameters."""
    by_class = defaultdict(list)
    for module in model.modules():
        if module is not model and not type(module).__module__.startswith("torch.nn"):
            by_class[type(module)].append(module)

    def size(module) -> int:
        return sum(p.numel() for p in module.parameters())

    total = size(model)
    candidates = [(sum(size(m) for m in modules), size(modules[0]), modules)
                  for modules in by_class.values() if len(modules) >= MIN_REPEATS]
    if not candidates or total == 0:
        return []
    held, _, modules = max(candidates, key=lambda c: c[:2])
    return modules if held >= MIN_SHARE * total else []


def compile_network(model) -> int:
    """Compile `model` in place (at its first call); returns how many blocks were set to compile (0: whole).

    `dynamic=False`: one graph per tile shape, specialised to it — the tiler keeps shapes steady."""
    blocks = repeated_blocks(model)
    for module in blocks or [model]:
        module.compile(dynamic=False)
    return len(blocks)


def is_compiled(model) -> bool:
    return any(getattr(module, "_compiled_call_impl", None) is not None for module in model.modules())


def uncompile(model) -> None:
    """Back to eager execution (after a compiler failure)."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


class StableBatch:
    """Pads a short batch of tiles to the largest batch seen, so a compiled graph sees one shape.

    The padding repeats the last tile; the caller keeps only the first `len(tiles)` outputs."""

    def __init__(self):
        self.size = 0

    def pad(self, tiles):
        import numpy as np

        n = len(tiles)
        self.size = max(self.size, n)
        if n == self.size:
            return tiles
        return np.concatenate([tiles, np.repeat(tiles[-1:], self.size - n, axis=0)])
