"""Rule `metrics`: tidy metric tables and figures for every method."""

from geodiff.evaluate.tables import write_tables
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
write_tables(
    store_path=snakemake.input.store,  # noqa: F821
    ensemble_path=snakemake.input.ensemble,  # noqa: F821
    baseline_paths=snakemake.input.baselines,  # noqa: F821
    metrics_path=snakemake.output.metrics,  # noqa: F821
    by_level_path=snakemake.output.by_level,  # noqa: F821
    figures_dir=snakemake.output.figures,  # noqa: F821
)
