# Evaluation: ensembles, baselines, metric tables and figures. Evaluation-only
# settings live here, so changing them never retrains. Jobs that run a model get a
# GPU when the device setting uses one; the device itself is a resource (no rerun).


rule sample:
    input:
        store=results("priors/{split}.h5"),
        deterministic=results("models/deterministic.pt"),
        residual=results("models/residual.pt"),
    output:
        results("samples/{split}_{ensemble}.nc"),
    log:
        logs("sample/{split}_{ensemble}"),
    benchmark:
        benchmarks("sample/{split}_{ensemble}")
    wildcard_constraints:
        ensemble="ensemble|ensemble_guided",
    conda:
        "../../envs/train-cuda.yaml" if uses_gpu() else "../../envs/train.yaml"
    threads: train_resources("cpus")
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=evaluate_gpus(),
        device=model_device(evaluate_gpus()),
    params:
        members=config["evaluate"]["ensemble_size"],
        sampler=config["evaluate"]["sampler"],
        steps=config["evaluate"]["sampler_steps"],
        s_churn=config["evaluate"]["s_churn"],
        guidance=get_guidance,
        seed=config["seed"],
        config_hash=get_sample_hash,
        run_name=config["run_name"],
    script:
        "../../scripts/sample.py"


rule constrain:
    input:
        prediction=results("{folder}/{split}_{name}.nc"),
        store=results("priors/{split}.h5"),
        weights=results("regrid/weights_conservative.nc"),
    output:
        results("{folder}/{split}_{name}_constrained.nc"),
    log:
        logs("constrain/{folder}_{split}_{name}"),
    wildcard_constraints:
        folder="samples|baselines",
        name="ensemble|ensemble_guided|deterministic",
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/constrain.py"


rule baselines:
    input:
        unpack(get_baseline_input),
    output:
        results("baselines/{split}_{baseline}.nc"),
    log:
        logs("baselines/{split}_{baseline}"),
    benchmark:
        benchmarks("baselines/{split}_{baseline}")
    wildcard_constraints:
        baseline="|".join(
            [
                "bicubic",
                "bilinear",
                "deterministic",
                *(f"ablation_{a}" for a in ABLATIONS),
            ]
        ),
    conda:
        "../../envs/train-cuda.yaml" if uses_gpu() else "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=get_baseline_gpus,
        device=get_baseline_device,
    params:
        config_hash=get_baseline_hash,
        run_name=config["run_name"],
    script:
        "../../scripts/baselines.py"


rule metrics:
    input:
        unpack(get_metrics_input),
    output:
        metrics=report(
            results("metrics.csv"), caption="../report/metrics.rst", category="Scores"
        ),
        by_level=results("metrics_by_level.csv"),
        summary=results("summary.md"),
        summary_table=report(
            results("summary.csv"), caption="../report/summary.rst", category="Scores"
        ),
        figures=[
            report(
                results(f"figures/{name}.png"),
                caption=f"../report/{name}.rst",
                category=category,
            )
            for name, category in FIGURES.items()
        ],
    log:
        logs("metrics"),
    benchmark:
        benchmarks("metrics")
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        splits=EVAL_SPLITS,
        config_hash=config_hash(HASHES),
        map_level=config["evaluate"]["map_level"],
        map_time=config["evaluate"]["map_time"],
    script:
        "../../scripts/metrics.py"


rule training_curves:
    input:
        get_trained_models(),
    output:
        report(
            results("figures/training.png"),
            caption="../report/training.rst",
            category="Training",
        ),
    log:
        logs("training_curves"),
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        logdirs={name: results(f"logs/tensorboard/{name}") for name in MODEL_NAMES},
    script:
        "../../scripts/training_curves.py"
