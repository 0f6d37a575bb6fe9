"""Spec -> grid: what one run is (`config.RunConfig`, built on the model's fields) and a sweep of them
(`grid.SweepSpec`: YAML specs, presets, the grid's expansion and validation)."""
