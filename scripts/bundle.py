"""Rule `bundle`: bundle.json beside the two model files, what applying them to new data needs."""

from geodiff.downscale.bundle import write_bundle
from geodiff.logs import setup_logging
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/bundle.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
write_bundle(
    snakemake.output[0],
    snakemake.params.config,
    snakemake.input.train,
    {"deterministic": snakemake.input.deterministic, "residual": snakemake.input.residual},
)
