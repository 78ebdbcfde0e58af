"""`python -m blk stencil …` (registered by `blk.cli`).

    python -m blk stencil generate --model M [--lora FILE[:SCALE] …] --prompt P [--role FG|MG|BG-overlay]
                                   [--seed S] [--size WxH] [--steps N] [--no-tta] [--count N] [--out DIR]
    python -m blk stencil alpha INPUT_OR_DIR [--paper auto|#RRGGBB] [--tt 0.0] [--ot 1.0] --out DIR
    python -m blk stencil compose LAYER.png … [--background #RRGGBB|FILE] [--at X,Y …] [--scale S …]
                                  --out FILE.ora      (also writes FILE.png and FILE-layers/)

`alpha` exits 1 when some files could not be converted (each is named with
its reason; the others are written). It never replaces a file: an output name
already taken becomes NAME-2.png, NAME-3.png …
"""

from __future__ import annotations

import sys
from pathlib import Path

from blk.cli_types import number, whole
from blk.errors import UserError, require_file


def add_commands(commands) -> None:
    from blk.generate.sketch import GUIDANCE_RANGE, MAX_COUNT, MAX_SEED, MAX_STEPS

    stencil = commands.add_parser("stencil", help="transparent assets: LayerDiffuse, ink to alpha, layers")
    actions = stencil.add_subparsers(dest="action", required=True)

    generate = actions.add_parser("generate", help="transparent assets with LayerDiffuse (+ your style LoRAs)")
    generate.add_argument("--model", required=True)
    generate.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="style LoRA")
    generate.add_argument("--prompt", default="")
    generate.add_argument("--role", default="", choices=["", "FG", "MG", "BG-overlay"], help="Z-role tag")
    generate.add_argument("--seed", type=whole(0, MAX_SEED), default=None, help="default: random (printed)")
    generate.add_argument("--size", default="1024x1024", help="WxH, rounded to 64 px with a notice")
    generate.add_argument("--steps", type=whole(1, MAX_STEPS), default=None)
    generate.add_argument("--guidance", type=number(*GUIDANCE_RANGE), default=None)
    generate.add_argument("--count", type=whole(1, MAX_COUNT), default=1)
    generate.add_argument("--no-tta", dest="augment", action="store_false",
                          help="one decoder pass instead of LayerDiffuse's 8-view augmentation (faster)")
    generate.add_argument("--image", default=None, metavar="FILE",
                          help="start from this RGBA image (image to image with transparency; keeps its size)")
    generate.add_argument("--strength", type=float, default=None,
                          help="with --image: how much is redrawn, 0..1 (default 0.6)")
    generate.add_argument("--device", default="auto")
    generate.add_argument("--out", default=None, help="folder (default: workspace/outputs/stencil/DATE)")
    generate.set_defaults(run=cmd_generate)

    alpha = actions.add_parser("alpha", help="scans of ink on paper → RGBA PNGs (GIMP's colour to alpha)")
    alpha.add_argument("input", help="an image, or a folder (walked recursively)")
    alpha.add_argument("--paper", default="auto", help="paper colour #RRGGBB, or auto to estimate it per image")
    alpha.add_argument("--tt", type=float, default=0.0, help="transparency threshold, 0..1 (default 0)")
    alpha.add_argument("--ot", type=float, default=1.0, help="opacity threshold, 0..1 (default 1)")
    alpha.add_argument("--out", required=True,
                       help="output folder (16-bit PNGs for 16-bit inputs; names already taken get -2, -3 …)")
    alpha.set_defaults(run=cmd_alpha)

    compose = actions.add_parser("compose", help="stack RGBA layers; write .ora, flattened .png and layer PNGs")
    compose.add_argument("layers", nargs="+", metavar="LAYER", help="bottom layer first")
    compose.add_argument("--background", default=None, help="#RRGGBB or an image file (default: transparent)")
    compose.add_argument("--at", action="append", default=[], metavar="X,Y",
                         help="top-left position, once per layer in order (default 0,0)")
    compose.add_argument("--scale", action="append", default=[], type=number(above=0),
                         help="scale factor, once per layer in order (default 1)")
    compose.add_argument("--out", required=True, help="the layered FILE.ora")
    compose.set_defaults(run=cmd_compose)


def cmd_generate(args, workspace) -> int:
    from blk.generate.cli import _size, print_results
    from blk.generate.sketch import Lora, Sketcher
    from blk.stencil.generate import Stenciler, StencilRequest

    if args.strength is not None and not args.image:
        raise UserError("--strength is how much of a starting image is redrawn: give the image with --image, or "
                        "leave --strength out.")
    width, height = _size(args.size)
    request = StencilRequest(model=args.model, prompt=args.prompt, role=args.role,
                             loras=[Lora.parse(text) for text in args.lora], seed=args.seed, width=width,
                             height=height, steps=args.steps, guidance=args.guidance, augment=args.augment,
                             count=args.count, device=args.device, out_dir=Path(args.out) if args.out else None,
                             image=Path(args.image) if args.image else None,
                             strength=0.6 if args.strength is None else args.strength)
    print_results(Stenciler(Sketcher(workspace)).run(
        request, progress=lambda done, total: print(f"\r{done}/{total}   ", end="", file=sys.stderr, flush=True)))
    return 0


def cmd_alpha(args, workspace) -> int:
    from blk.stencil.alpha import AlphaSettings, convert_batch

    settings = AlphaSettings(paper=args.paper, tt=args.tt, ot=args.ot)

    def progress(done, total):
        print(f"\r{done}/{total}   ", end="", file=sys.stderr, flush=True)

    result = convert_batch(Path(args.input), Path(args.out), settings, progress=progress)
    print(file=sys.stderr)
    for item in result.written:
        note = f"; {item.note}" if item.note else ""
        print(f"{item.source} → {item.output} ({item.bits}-bit, paper {item.paper}{note})")
    for source, reason in result.failed:
        print(f"  failed: {reason}")
    print(f"converted {len(result.written)}, failed {len(result.failed)}")
    return 1 if result.failed else 0


def _position(text: str) -> tuple[int, int]:
    try:
        x, y = (int(round(float(part))) for part in text.split(","))
    except ValueError:
        raise UserError(f"--at takes X,Y in pixels, like 120,40; got {text!r}.") from None
    return x, y


def _per_layer(values: list, count: int, flag: str, default) -> list:
    if not values:
        return [default] * count
    if len(values) != count:
        raise UserError(f"Give {flag} once per layer ({count}), or not at all; got it {len(values)} times.")
    return values


def cmd_compose(args, workspace) -> int:
    from blk.stencil.compose import compose, export, load_layer

    count = len(args.layers)
    positions = [_position(text) for text in _per_layer(args.at, count, "--at", "0,0")]
    scales = _per_layer(args.scale, count, "--scale", 1.0)
    for path in args.layers:
        require_file(path, "The layer")
    flat = Path(args.out).with_suffix(".png").resolve()
    if any(Path(path).resolve() == flat for path in [*args.layers, args.background or ""]):
        raise UserError(f"Writing {flat.name} (the flattened copy) would replace one of the inputs; "
                        "choose another --out name.")
    layers = [load_layer(path, x=x, y=y, scale=factor)
              for path, (x, y), factor in zip(args.layers, positions, scales)]
    exported = export(compose(layers, args.background), Path(args.out))
    print(f"{exported.ora} ({len(layers)} layers), flattened {exported.flat}, "
          f"layer PNGs in {exported.layers[0].parent}")
    return 0
