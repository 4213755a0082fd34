"""Built-in fader-kit masker plugins, installed as ``fader_kit_plugins``.

Each module here is announced through the ``fader_kit`` entry-point group in pyproject.toml and
registers its maskers with :func:`fader_kit.maskers.hookspecs.register_maskers`, exactly like a
third-party plugin would.
"""
