"""Image generation with loaded pipelines (Sketch and Review build on this)."""
