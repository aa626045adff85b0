"""The experiments of "Train-by-Reconnect" (LaPerm) as Flax models and presets.

Run ``python -m experiments --list`` for the presets, and
``python -m experiments demo`` for the demo on the embedded digits.
"""
