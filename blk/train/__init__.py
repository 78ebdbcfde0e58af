"""LoRA training of Flux.1 and SDXL (diffusers + peft).

- `config`: the one typed schema shared by presets, the UI form and the CLI.
- `data`: dataset items with captions, aspect buckets, caption augmentation.
- `families`: the training step of each family (Flux flow matching, SDXL noise prediction).
- `runner`: the run itself — a child process writing `runs/RUN/` (config, events, checkpoints, state).
"""
