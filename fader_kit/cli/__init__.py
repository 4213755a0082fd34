"""The ``fader-kit`` command line: the top layer, it imports every other and none imports it."""
