"""Numerical kernels and their references."""
