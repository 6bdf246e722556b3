"""Benchmarks that print tables and write plots; their figures are quoted in the README."""
