# The trained models as a tool: the bundle that makes them self-contained, and the
# downscaling of coarse inputs declared in config `downscale.inputs` (no fine truth).


rule bundle:
    input:
        deterministic=results("models/deterministic.pt"),
        residual=results("models/residual.pt"),
        train=results("priors/train.h5"),
    output:
        results(f"models/{BUNDLE}"),
    log:
        logs("bundle"),
    conda:
        "../../envs/train-cuda.yaml" if uses_gpu() else "../../envs/train.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=bundle_config(config),
    script:
        "../../scripts/bundle.py"


rule downscale:
    input:
        unpack(get_downscale_input),
    output:
        results("downscaled/{name}.nc"),
    log:
        logs("downscale/{name}"),
    benchmark:
        benchmarks("downscale/{name}")
    wildcard_constraints:
        name="|".join(DOWNSCALE_INPUTS) or "no_inputs_declared",
    conda:
        "../../envs/train-cuda.yaml" if uses_gpu() else "../../envs/train.yaml"
    threads: train_resources("cpus")
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=evaluate_gpus(),
        device=model_device(evaluate_gpus()),
    params:
        options=get_downscale_options,
    shell:
        "geodiff --log {log} downscale --model $(dirname {input.bundle}) --input {input.data} --out {output}"
        " --device {resources.device} {params.options}"
