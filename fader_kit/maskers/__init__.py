"""Maskers as plugins: the protocols (``interfaces``), the registry and its hooks, pretrained
weights and backbones.  Imports util only."""
