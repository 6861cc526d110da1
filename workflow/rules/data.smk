# Acquisition: one canonical NetCDF per month, plus fine-grid statics.

if config["data"].get("cds", {}).get("local_download", False):

    localrules:
        download,
        statics,


rule download:
    output:
        ensure(results("raw/{year}-{month}.nc"), non_empty=True),
    log:
        logs("download/{year}-{month}"),
    benchmark:
        benchmarks("download/{year}-{month}")
    retries:
        config["data"].get("cds", {}).get("retries", 3)
        if config["data"]["source"] == "cds"
        else 0
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=heavy_mem_mb,
        runtime=60,
        cds=1,
    params:
        config=data_params(),
    script:
        "../../scripts/download.py"


rule statics:
    output:
        ensure(results("raw/statics.nc"), non_empty=True),
    log:
        logs("statics"),
    benchmark:
        benchmarks("statics")
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        cds=1,
    params:
        config=data_params(),
    script:
        "../../scripts/statics.py"
