"""fader-kit's head experiments, as a plugin (installed as ``fader_kit_experiments``).

The head variants of docs/results/fader-head.md that neither the paper, the default head nor the
recommended one needs, and the strategies only they read through: a wider pixel window
(``neighbours``), patch statistics (``stats``), a frozen ImageNet CNN (``backbone``), the masker's score
as input (``score``) or as the gates themselves (gate ``score``), gates that end at the masker's
threshold (``threshold_end``) and gates held open on masked patches (``masked_one``).  They register
through the ``register_heads`` hook of the ``fader_kit`` entry-point group, exactly as a third-party
plugin would; ``fader-kit variants --all`` lists them.
"""
