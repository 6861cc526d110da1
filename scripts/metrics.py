"""Rule `metrics`: tidy metric tables, the summary and figures for every method."""

from pathlib import Path

from geodiff.evaluate.tables import write_tables
from geodiff.logs import setup_logging
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/metrics.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])


def files(name: str) -> list[str]:
    """The files of input `name` (one file given by hand is a string)."""
    value = getattr(snakemake.input, name)
    return [value] if isinstance(value, str) else list(value)


splits = snakemake.params.splits
write_tables(
    evaluations={
        split: (getattr(snakemake.input, f"store_{split}"), files(f"ensembles_{split}"), files(f"baselines_{split}"))
        for split in ([splits] if isinstance(splits, str) else splits)
    },
    metrics_path=snakemake.output.metrics,
    by_level_path=snakemake.output.by_level,
    summary_path=snakemake.output.summary,
    figures_dir=str(Path(snakemake.output.figures[0]).parent),
    config_hash=snakemake.params.config_hash,
    map_level=snakemake.params.map_level,
    map_time=snakemake.params.map_time,
)
