"""Rule `sample`: the GeoDiff ensemble (deterministic field + M residual draws) on one split."""

from geodiff.evaluate.sampling import write_ensemble
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
write_ensemble(
    store_path=snakemake.input.store,  # noqa: F821
    deterministic_path=snakemake.input.deterministic,  # noqa: F821
    residual_path=snakemake.input.residual,  # noqa: F821
    out_path=snakemake.output[0],  # noqa: F821
    members=snakemake.params.members,  # noqa: F821
    steps=snakemake.params.steps,  # noqa: F821
    s_churn=snakemake.params.s_churn,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    device=snakemake.params.device,  # noqa: F821
)
