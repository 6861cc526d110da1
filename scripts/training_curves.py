"""Rule `training_curves`: training loss and validation RMSE of every model, from the TensorBoard logs."""

from geodiff.evaluate.plots import plot_training
from geodiff.logs import setup_logging
from geodiff.stand_in import stand_in

if "snakemake" not in globals():  # run by hand: python scripts/training_curves.py --help
    snakemake = stand_in(__doc__)
setup_logging(snakemake.log[0])
plot_training(snakemake.params.logdirs, snakemake.output[0])
