"""Rule `sample`: the GeoDiff ensemble (deterministic field + M residual draws) on one split."""

from geodiff.evaluate.sampling import write_ensemble
from geodiff.logs import setup_logging
from geodiff.provenance import provenance_attrs
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/sample.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
write_ensemble(
    store_path=snakemake.input.store,
    deterministic_path=snakemake.input.deterministic,
    residual_path=snakemake.input.residual,
    out_path=snakemake.output[0],
    members=snakemake.params.members,
    sampler=snakemake.params.sampler,
    steps=snakemake.params.steps,
    s_churn=snakemake.params.s_churn,
    guidance=snakemake.params.guidance,
    seed=snakemake.params.seed,
    device=snakemake.resources.get("device", "auto"),
    attrs=provenance_attrs(snakemake.params.config_hash, snakemake.params.run_name),
)
