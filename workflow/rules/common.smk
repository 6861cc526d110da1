# Helpers shared by the rules: paths, months, splits, resources and params.
import json

from geodiff.provenance import config_hash
from geodiff.workflow import (
    check_splits,
    export_source_path,
    months_in_period,
    months_of_split,
    training_config,
)

# rule jobs (also conda envs without the package installed) import geodiff from this checkout
export_source_path(workflow.basedir)

RESULTS = config["results"]
check_splits(config)
MONTHS = months_in_period(config["data"]["period"])
SPLITS = ["train", "val", "test"]
UPSAMPLERS = ["bicubic", "bilinear"]
ABLATIONS = config["ablations"]


def results(path):
    """Path under the results folder."""
    return f"{RESULTS}/{path}"


def logs(name):
    """Log file of a rule."""
    return f"{RESULTS}/logs/{name}.log"


def benchmarks(name):
    """Benchmark file of a rule."""
    return f"{RESULTS}/benchmarks/{name}.tsv"


def get_final_outputs():
    """The targets of the default run: the metric tables (and through them everything else)."""
    return [results("metrics.csv"), results("metrics_by_level.csv")]


def get_split_months(wildcards):
    """Month keys YYYY-MM whose data overlaps a split's period."""
    return months_of_split(config, wildcards.split, MONTHS)


def get_split_period(wildcards):
    """{start, end} of a split."""
    return config["splits"][wildcards.split]


def data_params():
    """The config keys that define the downloaded data (nothing downstream), as sorted JSON
    so that Snakemake's params trigger sees the same text for the same values."""
    return json.dumps(
        {k: config[k] for k in ("seed", "data", "grid", "levels")}, sort_keys=True
    )


def store_hash():
    """Hash of the keys that define the HDF5 stores (never evaluation-only ones)."""
    return config_hash(
        {
            k: config[k]
            for k in ("seed", "data", "grid", "levels", "regrid", "priors", "splits")
        }
    )


def get_priors_input(wildcards):
    """Raw and regridded months of a split, statics, and train stats for val/test."""
    months = get_split_months(wildcards)
    inputs = {
        "raw": [results(f"raw/{m}.nc") for m in months],
        "regrid": [results(f"regrid/{m}.nc") for m in months],
        "statics": results("raw/statics.nc"),
    }
    if wildcards.split != "train":
        inputs["stats_from"] = results("priors/train.h5")
    return inputs


def train_params(ablation=None):
    """Everything that defines a trained model, and nothing evaluation-only (so evaluation
    changes never retrain); an ablation switches the priors or the physics loss terms off.
    """
    return json.dumps(training_config(config, ablation), sort_keys=True)


def get_baseline_files():
    """Baseline fields on the evaluation split: interpolations and the deterministic U-Net."""
    split = config["evaluate"]["split"]
    methods = [
        *config["evaluate"]["baselines"],
        "deterministic",
        *(f"ablation_{a}" for a in ABLATIONS),
    ]
    return [results(f"baselines/{split}_{m}.nc") for m in methods]


def get_ablation_params(wildcards):
    """Training params of one ablation of the deterministic U-Net."""
    return train_params(wildcards.ablation)


def get_baseline_input(wildcards):
    """The split's store, and the U-Net for the deterministic and ablation baselines."""
    inputs = {"store": results(f"priors/{wildcards.split}.h5")}
    if wildcards.baseline not in UPSAMPLERS:
        inputs["deterministic"] = results(f"models/{wildcards.baseline}.pt")
    return inputs


def get_train_mpi():
    """The rank launcher of multi-task training jobs ("" for one task: not an MPI job)."""
    return config["train"]["launcher"] if train_resources("tasks") > 1 else ""


def get_train_launch():
    """Shell prefix that starts the training ranks, e.g. "srun -n 8"."""
    mpi = get_train_mpi()
    return f"{mpi} -n {train_resources('tasks')}" if mpi else ""


def train_resources(key):
    """A training resource from config train.resources."""
    return config["train"]["resources"][key]


def heavy_mem_mb(wildcards, attempt):
    """Memory of a data-sized job, MB, growing with retries."""
    return 4000 * attempt
