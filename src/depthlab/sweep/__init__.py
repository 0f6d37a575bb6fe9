"""Sweeps: the results store (`store`) that runners share, and exporting its records (`export`)."""
