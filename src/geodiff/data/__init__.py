"""Data: sources, canonical form, grids, regridding and the HDF5 store."""
