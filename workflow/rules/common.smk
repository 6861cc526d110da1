# Helpers shared by the rules: paths, months, splits, stage hashes, resources and params.
import json
import os
import shlex

from geodiff.constants import BUNDLE
from geodiff.shutdown import stop_jobs_on_signal
from geodiff.provenance import config_hash
from geodiff.workflow import (
    bundle_config,
    export_source_path,
    local_files_by_month,
    months_in_period,
    months_of_split,
    splits_of,
    stage_configs,
    stage_hashes,
    training_config,
    write_resolved_config,
)

# rule jobs (also conda envs without the package installed) import geodiff from this checkout
export_source_path(workflow.basedir)

RUN = f"{config['results']}/{config['run_name']}"
MONTHS = months_in_period(config["data"]["period"])
SPLITS = splits_of(config)  # train, val, test and, when configured, test_shift
UPSAMPLERS = ["bicubic", "bilinear"]
ABLATIONS = config["ablations"]
HASHES = stage_hashes(config)
MODEL_NAMES = ["deterministic", "residual", *(f"ablation_{a}" for a in ABLATIONS)]
DOWNSCALE_INPUTS = config["downscale"]["inputs"]
EVAL_SPLITS = [
    config["evaluate"]["split"],
    *(["test_shift"] if "test_shift" in config["splits"] else []),
]
"""Splits scored by the metrics rule: the evaluation split, and the climate-shifted one when configured."""
FIGURES = {
    "maps": "Fields",
    "profiles": "Scores",
    "spectra": "Fields",
    "rank_histograms": "Calibration",
    "spread_skill": "Calibration",
    **({"climate_shift": "Climate shift"} if len(EVAL_SPLITS) > 1 else {}),
}
"""Figures of the metrics rule (what geodiff.evaluate.tables.write_tables writes) and their report category."""
LOCAL_FILES = (
    local_files_by_month(config, MONTHS) if config["data"]["source"] == "local" else {}
)


def results(path):
    """Path under this run's folder, results/{run_name}."""
    return f"{RUN}/{path}"


def logs(name):
    """Log file of a rule."""
    return f"{RUN}/logs/{name}.log"


def benchmarks(name):
    """Benchmark file of a rule."""
    return f"{RUN}/benchmarks/{name}.tsv"


def get_final_outputs():
    """The targets of the default run: the metric tables and summary (through them everything
    else), the training curves and the models' bundle (what `geodiff downscale` applies).
    """
    return [
        results(f"models/{BUNDLE}"),
        results("metrics.csv"),
        results("metrics_by_level.csv"),
        results("summary.md"),
        results("figures/training.png"),
    ]


def get_trained_models():
    """Every model file of the run (their trainings wrote the TensorBoard logs)."""
    return [results(f"models/{name}.pt") for name in MODEL_NAMES]


def print_summary(path):
    """Print the run's summary table at the end of a successful run, when it exists."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            print(fh.read())


def get_download_input(wildcards):
    """The user's files holding the month (source local), so editing one reruns that month."""
    return LOCAL_FILES.get(f"{wildcards.year}-{wildcards.month}", [])


def get_statics_input(wildcards):
    """The user's statics file (source local)."""
    statics = config["data"]["local"]["statics"]
    return [statics] if config["data"]["source"] == "local" and statics else []


def get_split_months(wildcards):
    """Month keys YYYY-MM whose data overlaps a split's period."""
    return months_of_split(config, wildcards.split, MONTHS)


def get_split_period(wildcards):
    """{start, end} of a split."""
    return config["splits"][wildcards.split]


def stage_params(stage):
    """The config keys that define a stage's artifacts (`stage_configs`), keys sorted at every
    level so that Snakemake's params trigger sees the same text for the same values.
    """
    return json.loads(json.dumps(stage_configs(config)[stage], sort_keys=True))


def get_store_hash(wildcards):
    """Hash of what defines a split's store (that split's period, not the others')."""
    return HASHES[f"store_{wildcards.split}"]


def get_priors_input(wildcards):
    """The month files of a split's store, in time order, and the train store (its stats) for val/test."""
    inputs = {
        "months": [
            results(f"priors/{wildcards.split}/{m}.h5")
            for m in get_split_months(wildcards)
        ]
    }
    if wildcards.split != "train":
        inputs["stats_from"] = results("priors/train.h5")
    return inputs


def train_params(stage, ablation=None):
    """The keys that shape a stage's model and nothing else (so evaluation-only, run-only or other
    stages' settings never retrain it); an ablation switches the priors or the physics loss terms
    off. `geodiff train` hashes exactly this into the model file (the stage's `HASHES` entry).
    """
    return json.dumps(training_config(config, stage, ablation), sort_keys=True)


def get_ablation_params(wildcards):
    """Training params of one ablation of the deterministic U-Net."""
    return train_params("deterministic", wildcards.ablation)


def get_deterministic_option(wildcards, input):
    """`--deterministic <model>` for the residual stage, which learns that model's residual."""
    return (
        f"--deterministic {shlex.quote(input.deterministic)}"
        if "deterministic" in input.keys()
        else ""
    )


def constrained(names):
    """`names`, each followed by its `_constrained` form when config model.constraint is on."""
    if config["model"]["constraint"] == "none":
        return list(names)
    return [n for name in names for n in (name, f"{name}_constrained")]


def get_metrics_input(wildcards):
    """For each evaluation split s (EVAL_SPLITS): `store_s`, `ensembles_s` and `baselines_s`."""
    inputs = {}
    for split in EVAL_SPLITS:
        inputs[f"store_{split}"] = results(f"priors/{split}.h5")
        inputs[f"ensembles_{split}"] = get_ensemble_files(split)
        inputs[f"baselines_{split}"] = get_baseline_files(split)
    return inputs


def get_baseline_files(split):
    """Baseline fields on `split`: interpolations, the deterministic U-Net (and its constrained
    form) and the ablations."""
    methods = [
        *config["evaluate"]["baselines"],
        *constrained(["deterministic"]),
        *(f"ablation_{a}" for a in ABLATIONS),
    ]
    return [results(f"baselines/{split}_{m}.nc") for m in methods]


def get_ensemble_files(split):
    """Ensembles on `split`: plain, guided (evaluate.guidance.stability > 0), and the constrained
    form of each (model.constraint)."""
    guided = (
        ["ensemble_guided"] if config["evaluate"]["guidance"]["stability"] > 0 else []
    )
    return [
        results(f"samples/{split}_{e}.nc") for e in constrained(["ensemble", *guided])
    ]


def get_guidance(wildcards):
    """Config evaluate.guidance for the guided ensemble, None for the plain one."""
    return (
        dict(config["evaluate"]["guidance"])
        if wildcards.ensemble == "ensemble_guided"
        else None
    )


def get_sample_hash(wildcards):
    """What defines an ensemble: the sampler and the models (and the guidance, for the guided one)."""
    return HASHES[
        "sample_guided" if wildcards.ensemble == "ensemble_guided" else "sample"
    ]


def get_baseline_input(wildcards):
    """The split's store, and the U-Net for the deterministic and ablation baselines."""
    inputs = {"store": results(f"priors/{wildcards.split}.h5")}
    if wildcards.baseline not in UPSAMPLERS:
        inputs["deterministic"] = results(f"models/{wildcards.baseline}.pt")
    return inputs


def train_resources(key):
    """A training resource from config train.resources."""
    return config["train"]["resources"][key]


def get_train_tasks_per_node():
    """Ranks on each node of a training job (sbatch --ntasks-per-node): train.resources.tasks over nodes."""
    tasks, nodes = train_resources("tasks"), train_resources("nodes")
    if tasks % nodes:
        raise ValueError(
            f"train.resources: tasks ({tasks}, the ranks of all nodes) must be a multiple of nodes ({nodes})"
        )
    return tasks // nodes


def get_train_mpi():
    """The rank launcher of multi-task training jobs ("" for one task: not an MPI job)."""
    return config["train"]["launcher"] if train_resources("tasks") > 1 else ""


def get_train_launch():
    """Shell prefix that starts the training ranks, e.g. "srun -n 8"."""
    mpi = get_train_mpi()
    return f"{mpi} -n {train_resources('tasks')}" if mpi else ""


def train_gpus_per_node():
    """GPUs on each node of a training job: train.resources.gpus, at least one with device cuda, none on cpu."""
    device, gpus = config["train"]["device"], train_resources("gpus")
    if device == "cpu":
        return 0
    return max(gpus, 1) if device == "cuda" else gpus


def uses_gpu():
    """Whether the jobs that run a model get GPUs: device cuda, or auto with train.resources.gpus > 0."""
    return train_gpus_per_node() > 0


def get_train_gpus():
    """GPUs of a whole training job: nodes x GPUs per node (the SLURM plugin's `gpu`, sbatch --gpus)."""
    return train_resources("nodes") * train_gpus_per_node()


def evaluate_gpus():
    """GPUs of a job that runs a trained model (sample, baselines): one when a GPU is used."""
    return 1 if uses_gpu() else 0


def model_device(gpus):
    """--device of a job that runs a model with `gpus` GPUs: cuda with GPUs; without, cpu in a run that
    uses GPUs (an interpolation baseline), else train.device (cpu, or auto on one machine).
    """
    if gpus > 0:
        return "cuda"
    return "cpu" if uses_gpu() else config["train"]["device"]


def get_baseline_hash(wildcards):
    """What defines a baseline: the store for an interpolation, the model's training for a U-Net."""
    if wildcards.baseline in UPSAMPLERS:
        return get_store_hash(wildcards)
    return HASHES[wildcards.baseline]


def get_baseline_gpus(wildcards):
    """GPUs of a baseline job: none for an interpolation."""
    return 0 if wildcards.baseline in UPSAMPLERS else evaluate_gpus()


def get_baseline_device(wildcards):
    """--device of a baseline job: cuda when it asks for a GPU (see model_device)."""
    return model_device(get_baseline_gpus(wildcards))


def get_downscale_input(wildcards):
    """The bundle, the models it names and the declared input files of one downscale.inputs entry."""
    entry = DOWNSCALE_INPUTS[wildcards.name]
    inputs = {
        "bundle": results(f"models/{BUNDLE}"),
        "models": [results(f"models/{m}.pt") for m in ("deterministic", "residual")],
        "data": entry["paths"],
    }
    if entry["statics"]:
        inputs["statics"] = entry["statics"]
    return inputs


def get_downscale_options(wildcards):
    """Command-line options of `geodiff downscale` for one downscale.inputs entry."""
    entry = DOWNSCALE_INPUTS[wildcards.name]
    options = [
        f"--tile {config['downscale']['tile']}",
        f"--overlap {config['downscale']['overlap']}",
        f"--seed {config['seed']}",
    ]
    if entry["box"]:
        options.append("--box " + " ".join(str(v) for v in entry["box"]))
    if entry["members"]:
        options.append(f"--members {entry['members']}")
    if entry["statics"]:
        options.append(f"--statics {entry['statics']}")
    return " ".join(options)


def heavy_mem_mb(wildcards, attempt):
    """Memory of a data-sized job, MB, growing with retries."""
    return 4000 * attempt


onstart:
    stop_jobs_on_signal()
    write_resolved_config(config, results("config.resolved.yaml"))
