"""Rule `priors`: the HDF5 store of one split (truth, input, physics priors, statics, stats)."""

from geodiff.data.store import build_store
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
build_store(
    out_path=snakemake.output[0],  # noqa: F821
    raw_paths=snakemake.input.raw,  # noqa: F821
    lowres_paths=snakemake.input.regrid,  # noqa: F821
    statics_path=snakemake.input.statics,  # noqa: F821
    period=snakemake.params.period,  # noqa: F821
    prior_names=snakemake.params.priors,  # noqa: F821
    upsample=snakemake.params.upsample,  # noqa: F821
    config_digest=snakemake.params.config_hash,  # noqa: F821
    scale_factor=snakemake.params.scale_factor,  # noqa: F821
    stats_from=snakemake.input.get("stats_from"),  # noqa: F821
)
