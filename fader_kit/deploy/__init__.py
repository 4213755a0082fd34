"""From normal images to a detector folder and back: fit, the folder's files, thresholds,
predict, export.  Imports util, maskers, data and model; the engine and cli build on it."""
