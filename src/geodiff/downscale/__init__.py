"""Applying a trained model to coarse data that has no fine truth (`geodiff downscale`)."""
