"""Rule `regrid`: the coarse field of one month and its interpolations back to the fine grid."""

from geodiff.data.lowres import write_lowres
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
weights = dict(zip(snakemake.params.methods, snakemake.input.weights))  # noqa: F821
write_lowres(snakemake.input.raw, weights, snakemake.output[0])  # noqa: F821
