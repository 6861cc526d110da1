# Acquisition: one canonical NetCDF per month, plus fine-grid statics. How a download runs
# (data.cds.retries: attempts; local_download: on the submit host) is no param, so changing it
# never reruns a month.

if config["data"]["cds"]["local_download"]:

    localrules:
        download,
        statics,


rule download:
    input:
        get_download_input,
    output:
        ensure(results("raw/{year}-{month}.nc"), non_empty=True),
    log:
        logs("download/{year}-{month}"),
    benchmark:
        benchmarks("download/{year}-{month}")
    retries: config["data"]["cds"]["retries"] if config["data"]["source"] == "cds" else 0
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=heavy_mem_mb,
        runtime=60,
        cds=1,
        cds_retries=config["data"]["cds"]["retries"],
    params:
        config=stage_params("data"),
        config_hash=HASHES["data"],
        run_name=config["run_name"],
    script:
        "../../scripts/download.py"


rule statics:
    input:
        get_statics_input,
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
        cds_retries=config["data"]["cds"]["retries"],
    params:
        config=stage_params("statics"),
        config_hash=HASHES["statics"],
        run_name=config["run_name"],
    script:
        "../../scripts/statics.py"
