"""Benchmarks of fader-kit: the paper's tables, speed, and their reports."""
