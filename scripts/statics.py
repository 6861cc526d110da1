"""Rule `statics`: orography and land-sea mask on the fine grid."""

from geodiff.data.sources import download_statics
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in, with_cds_retries

if "snakemake" not in globals():  # run by hand: python scripts/statics.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
download_statics(
    with_cds_retries(snakemake.params.config, snakemake.resources),
    snakemake.output[0],
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
