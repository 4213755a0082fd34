"""One way to run work: every command that trains and scores models plans a grid and runs it here.

Data flow, one module per stage:

- :mod:`~fader_kit.engine.sources`: where the binary masks come from (a masker, or the oracle).
- :mod:`~fader_kit.engine.keys`: cache keys that hold exactly the settings that change an artifact.
- :mod:`~fader_kit.engine.artifacts`: the compute cache (fitted maskers, masks, EAR U-Nets).
- :mod:`~fader_kit.engine.workbench`: computes an artifact or an evaluated model by settings.
- :mod:`~fader_kit.engine.jobs`: job kinds -- what one unit computes (keys, run, typed row) -- and their registry.
- :mod:`~fader_kit.engine.unit_kinds`: the built-in kinds: a scored model, the masker alone.
- :mod:`~fader_kit.engine.runner`: the grid, its plan, the serial executor and the recorder.
- :mod:`~fader_kit.engine.ray`: the Ray executor (same rows).
- :mod:`~fader_kit.engine.store`: the results folder (SQLite rows and per-image score details).
- :mod:`~fader_kit.engine.aggregate`: the one seed aggregation (mean, spread) and paired intervals.
- :mod:`~fader_kit.engine.evaluate`: ``fader-kit evaluate``, a grid of one category.
"""
