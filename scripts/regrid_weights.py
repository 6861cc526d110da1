"""Rule `regrid_weights`: weights of one regridding method, computed once for every month."""

from geodiff.data.lowres import make_regridder
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
regridder = make_regridder(snakemake.params.grid, snakemake.wildcards.method, snakemake.params.backend)  # noqa: F821
regridder.save(snakemake.output[0])  # noqa: F821
