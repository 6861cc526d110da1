"""Rule `priors`: the HDF5 store of one split, virtual datasets over its month files, with the merged (or train) stats."""

from geodiff.data.store import assemble_store
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/store.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
assemble_store(
    out_path=snakemake.output[0],
    month_paths=snakemake.input.months,
    stats_from=snakemake.input.get("stats_from"),
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
