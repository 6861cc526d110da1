"""Rule `baselines`: an interpolation or the deterministic U-Net on one split."""

from geodiff.evaluate.baselines import write_baseline
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
write_baseline(
    store_path=snakemake.input.store,  # noqa: F821
    method=snakemake.wildcards.baseline,  # noqa: F821
    out_path=snakemake.output[0],  # noqa: F821
    deterministic_path=snakemake.input.get("deterministic"),  # noqa: F821
    device=snakemake.params.device,  # noqa: F821
)
