"""Rule `metrics`: tidy metric tables, the summary and figures for every method."""

from pathlib import Path

from geodiff.evaluate.tables import write_tables
from geodiff.logs import setup_logging
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/metrics.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
write_tables(
    store_path=snakemake.input.store,
    ensemble_paths=snakemake.input.ensembles,
    baseline_paths=snakemake.input.baselines,
    metrics_path=snakemake.output.metrics,
    by_level_path=snakemake.output.by_level,
    summary_path=snakemake.output.summary,
    figures_dir=str(Path(snakemake.output.figures[0]).parent),
    config_hash=snakemake.params.config_hash,
    map_level=snakemake.params.map_level,
    map_time=snakemake.params.map_time,
)
