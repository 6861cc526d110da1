# Training: the deterministic U-Net, then the EDM diffusion model of its residual.
# `train.launcher` starts the ranks (e.g. "srun" under profiles/slurm); the CLI
# detects torchrun, srun or mpirun itself.


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
    params:
        config=train_params(),
        launcher=config["train"]["launcher"],
        logdir=results("logs/tensorboard/deterministic"),
    threads: workflow.cores
    resources:
        nodes=train_resources("nodes"),
        tasks=train_resources("tasks"),
        gpu=train_resources("gpus"),
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime"),
        mpi="srun",
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launcher} geodiff train --stage deterministic --train {input.train:q} --val {input.val:q}"
        " --out {output:q} --logdir {params.logdir:q} --config-json {params.config:q} > {log:q} 2>&1"


rule train_residual:
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
        config=train_params(),
        launcher=config["train"]["launcher"],
        logdir=results("logs/tensorboard/residual"),
    threads: workflow.cores
    resources:
        nodes=train_resources("nodes"),
        tasks=train_resources("tasks"),
        gpu=train_resources("gpus"),
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime"),
        mpi="srun",
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launcher} geodiff train --stage residual --train {input.train:q} --val {input.val:q}"
        " --deterministic {input.deterministic:q} --out {output:q} --logdir {params.logdir:q}"
        " --config-json {params.config:q} > {log:q} 2>&1"
