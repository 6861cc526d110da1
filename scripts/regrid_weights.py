"""Rule `regrid_weights`: weights of one regridding method, computed once for every month."""

from geodiff.data.lowres import make_regridder
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/regrid_weights.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
make_regridder(snakemake.params.grid, snakemake.wildcards.method, snakemake.params.backend).save(
    snakemake.output[0], attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name)
)
