"""Sweeps, ablations, analyses, plots."""
