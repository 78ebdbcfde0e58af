"""Model layer: which models exist, where their weights are, how they load.

- `registry`: the known names (flux-dev, flux-schnell, sdxl, tiny-flux, tiny-sdxl),
  resolving a name or a path to local weights, offline.
- `tiny`: random-weight models built in code, for the demo mode and the tests.
- `device`: one place for device, dtype and memory policy.
- `pipelines`: loaded pipelines kept between calls; LoRAs swapped without reloading.
- `speed`: regional compilation of the denoiser and the attention backend (load options).
- `fetch`: the only networked command (explicit download).

Nothing here imports torch at module import time except `tiny`, `device` and
`pipelines`, which callers import only when a job needs them.
"""
