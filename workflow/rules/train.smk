# Training: the deterministic U-Net, then the EDM diffusion model of its residual.
# How a training runs (device, checkpoint interval, ranks and their launcher) reaches the
# shell through `resources`, which never trigger a rerun; what defines the model is the
# `config` param. With train.resources.tasks > 1 the ranks are started by `train.launcher`
# (srun by default, as snakemake-executor-plugin-slurm expects for mpi jobs).


rule train_deterministic:
    input:
        train=results("priors/train.h5"),
        val=results("priors/val.h5"),
    output:
        results("models/deterministic.pt"),
    log:
        logs("train_deterministic"),
    benchmark:
        benchmarks("train_deterministic")
    conda:
        "../../envs/train-cuda.yaml" if uses_gpu() else "../../envs/train.yaml"
    threads: train_resources("cpus")
    resources:
        # train.resources as snakemake-executor-plugin-slurm's sbatch options
        nodes=train_resources("nodes"),  # --nodes
        tasks_per_node=get_train_tasks_per_node(),  # --ntasks-per-node (MPI jobs)
        gpu=get_train_gpus(),  # --gpus: nodes x GPUs per node
        cpus_per_task=train_resources("cpus"),  # --cpus-per-task
        mem_mb=train_resources("mem_mb"),  # --mem, per node
        runtime=train_resources("runtime"),  # --time, minutes
        mpi=get_train_mpi(),
        launch=get_train_launch(),
        device=model_device(get_train_gpus()),
        checkpoint_every=config["train"]["checkpoint_every"],
        keep_checkpoints=config["train"]["keep_checkpoints"],
    params:
        stage="deterministic",
        config=train_params("deterministic"),
        deterministic=get_deterministic_option,
        logdir=results("logs/tensorboard/deterministic"),
    shell:
        "{resources.launch} python -m geodiff train --stage {params.stage} --train {input.train:q} --val {input.val:q}"
        " {params.deterministic} --out {output:q} --logdir {params.logdir:q} --config-json {params.config:q}"
        " --device {resources.device} --checkpoint-every {resources.checkpoint_every}"
        " --keep-checkpoints {resources.keep_checkpoints} > {log:q} 2>&1"


use rule train_deterministic as train_residual with:
    input:
        train=results("priors/train.h5"),
        val=results("priors/val.h5"),
        deterministic=results("models/deterministic.pt"),
    output:
        results("models/residual.pt"),
    log:
        logs("train_residual"),
    benchmark:
        benchmarks("train_residual")
    params:
        stage="residual",
        config=train_params("residual"),
        deterministic=get_deterministic_option,
        logdir=results("logs/tensorboard/residual"),


use rule train_deterministic as train_ablation with:
    output:
        results("models/ablation_{ablation}.pt"),
    log:
        logs("train_ablation/{ablation}"),
    benchmark:
        benchmarks("train_ablation/{ablation}")
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    params:
        stage="deterministic",
        config=get_ablation_params,
        deterministic=get_deterministic_option,
        logdir=results("logs/tensorboard/ablation_{ablation}"),
