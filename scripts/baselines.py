"""Rule `baselines`: an interpolation or the deterministic U-Net on one split."""

from geodiff.evaluate.baselines import write_baseline
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/baselines.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
write_baseline(
    store_path=snakemake.input.store,
    method=snakemake.wildcards.baseline,
    out_path=snakemake.output[0],
    deterministic_path=snakemake.input.get("deterministic"),
    device=snakemake.resources.get("device", "auto"),
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
