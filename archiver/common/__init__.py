"""Leaf helpers every layer may use: logging, signals, time, process identity, task results.

Nothing here imports another archiver package except :mod:`archiver.errors`.
"""
