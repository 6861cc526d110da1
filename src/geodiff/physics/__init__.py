"""Vertical physics: thermodynamic diagnostics and the priors built from them."""
