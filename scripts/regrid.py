"""Rule `regrid`: the coarse field of one month and its interpolations back to the fine grid."""

from geodiff.data.lowres import write_lowres
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/regrid.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
write_lowres(
    snakemake.input.raw,
    dict(zip(snakemake.params.methods, snakemake.input.weights)),
    snakemake.output[0],
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
