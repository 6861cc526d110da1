"""Networks, EDM diffusion and training losses."""
