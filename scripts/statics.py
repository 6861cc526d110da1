"""Rule `statics`: orography and land-sea mask on the fine grid."""

from geodiff.data.sources import download_statics
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/statics.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
config = snakemake.params.config  # what defines the file; the CDS attempts come as a resource (no rerun)
if snakemake.resources.get("cds_retries") is not None:
    config["data"].setdefault("cds", {})["retries"] = snakemake.resources.cds_retries
download_statics(
    config,
    snakemake.output[0],
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
