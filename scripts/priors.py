"""Rule `priors`: the HDF5 store of one split (truth, input, physics priors, statics, stats)."""

from geodiff.data.store import build_store
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/priors.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
build_store(
    out_path=snakemake.output[0],
    raw_paths=snakemake.input.raw,
    lowres_paths=snakemake.input.regrid,
    statics_path=snakemake.input.statics,
    period=snakemake.params.period,
    prior_names=snakemake.params.priors,
    upsample=snakemake.params.upsample,
    scale_factor=snakemake.params.scale_factor,
    stats_from=snakemake.input.get("stats_from"),
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
