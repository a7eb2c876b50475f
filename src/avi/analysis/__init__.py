"""Consumers of fits: comparisons of families, sweeps, refinement, diagnostics and plots."""
