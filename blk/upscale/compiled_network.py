"""Compiling an upscaling network (an option of a job: `EsrganJob.compile`, the diffusion path's
`MemoryOptions.compile` for its enlargement): `torch.compile` on the network's repeated block.

Why: an RRDB network (Real-ESRGAN) spends much of its time outside its convolutions — each dense block
concatenates its growing feature maps four times and applies LeakyReLU and a residual sum as separate
kernels. Inductor fuses those into the kernels around the convolutions. On a 2-core CPU the network alone,
at the x4plus shapes (64 features, 23 blocks), runs 1.03–1.13× faster, depending on the tile; on a GPU,
where those kernels are memory-bound, the gain is what `bench/upscale.py --compiled` measures.

Regional, as the Sketch tab compiles a denoiser (`blk.models.speed`): the block that repeats (RRDB's 23
`RRDB`s, SwinIR's residual groups) is compiled once and every instance shares that graph, so compiling
costs seconds, not the whole network's minutes. A network without such a block is compiled whole.

Shapes: compiled for any tile size from the start (`dynamic=True`): one graph serves every batch and tile
size (a batch of one tile gets a second: TorchDynamo specialises sizes of 1), so a studio that runs upscale
after upscale compiles once and never reaches TorchDynamo's limit of 8 graphs per block, past which a
graph-per-shape network would run uncompiled without a word. The tiler's batches of one row differ by one
tile at most (`tiler.even_batches`), so a batch of one is rare.
"""

from __future__ import annotations

from collections import defaultdict

# for any module, a network as a denoiser: whether it is compiled, and back to eager after a compiler failure
from blk.models.speed import drop_compiled_calls as uncompile  # noqa: F401
from blk.models.speed import is_compiled  # noqa: F401

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


def compile_network(model, dynamic: bool = True) -> int:
    """Compile `model` in place (at its first call); returns how many blocks were set to compile (0: whole).
    `dynamic=False` (graphs made per shape) only for `bench/upscale.py --layouts --compiled`, which times both."""
    blocks = repeated_blocks(model)
    for module in blocks or [model]:
        module.compile(dynamic=dynamic)
    return len(blocks)
