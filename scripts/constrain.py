"""Rule `constrain`: a prediction (U-Net field or ensemble) made to coarsen exactly to its coarse input."""

from geodiff.evaluate.constraint import write_constrained
from geodiff.logs import setup_logging
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/constrain.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
write_constrained(
    prediction_path=snakemake.input.prediction,
    store_path=snakemake.input.store,
    weights_path=snakemake.input.weights,
    out_path=snakemake.output[0],
)
