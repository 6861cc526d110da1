"""Rule `priors_month`: one month of a split's store (truth, input, physics priors, statics, the sums of its stats)."""

from geodiff.data.store import build_month
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/priors.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
build_month(
    out_path=snakemake.output[0],
    raw_path=snakemake.input.raw,
    lowres_path=snakemake.input.regrid,
    statics_path=snakemake.input.statics,
    period=snakemake.params.period,
    prior_names=snakemake.params.priors,
    upsample=snakemake.params.upsample,
    scale_factor=snakemake.params.scale_factor,
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
