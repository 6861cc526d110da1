"""Sampling, baselines, metrics and figures."""
