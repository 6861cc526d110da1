# Training: the deterministic U-Net, then the EDM diffusion model of its residual.
# With train.resources.tasks > 1 the ranks are started by `train.launcher` (srun by
# default, as snakemake-executor-plugin-slurm expects for mpi jobs); the CLI detects
# torchrun, srun or mpirun itself.


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
        "../../envs/train.yaml"
    threads: train_resources("cpus")
    resources:
        nodes=train_resources("nodes"),
        tasks=train_resources("tasks"),
        gpu=train_resources("gpus"),
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime"),
        mpi=get_train_mpi(),
    params:
        config=train_params(),
        launch=get_train_launch(),
        logdir=results("logs/tensorboard/deterministic"),
    shell:
        "{params.launch} python -m geodiff train --stage deterministic --train {input.train:q} --val {input.val:q}"
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
    conda:
        "../../envs/train.yaml"
    threads: train_resources("cpus")
    resources:
        nodes=train_resources("nodes"),
        tasks=train_resources("tasks"),
        gpu=train_resources("gpus"),
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime"),
        mpi=get_train_mpi(),
    params:
        config=train_params(),
        launch=get_train_launch(),
        logdir=results("logs/tensorboard/residual"),
    shell:
        "{params.launch} python -m geodiff train --stage residual --train {input.train:q} --val {input.val:q}"
        " --deterministic {input.deterministic:q} --out {output:q} --logdir {params.logdir:q}"
        " --config-json {params.config:q} > {log:q} 2>&1"


rule train_ablation:
    input:
        train=results("priors/train.h5"),
        val=results("priors/val.h5"),
    output:
        results("models/ablation_{ablation}.pt"),
    log:
        logs("train_ablation/{ablation}"),
    benchmark:
        benchmarks("train_ablation/{ablation}")
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    conda:
        "../../envs/train.yaml"
    threads: train_resources("cpus")
    resources:
        nodes=train_resources("nodes"),
        tasks=train_resources("tasks"),
        gpu=train_resources("gpus"),
        mem_mb=train_resources("mem_mb"),
        runtime=train_resources("runtime"),
        mpi=get_train_mpi(),
    params:
        config=get_ablation_params,
        launch=get_train_launch(),
        logdir=results("logs/tensorboard"),
    shell:
        "{params.launch} python -m geodiff train --stage deterministic --train {input.train:q} --val {input.val:q}"
        " --out {output:q} --logdir {params.logdir:q}/ablation_{wildcards.ablation} --config-json {params.config:q}"
        " > {log:q} 2>&1"
