"""The bottom layer: small helpers every other module may use and that import nothing of fader-kit
but :mod:`fader_kit.errors` (atomic writes, batching, quantiles of large arrays, timing, options)."""
