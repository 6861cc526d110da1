# Regridding: conservative fine -> coarse, then bicubic/bilinear coarse -> fine.


rule regrid_weights:
    output:
        results("regrid/weights_{method}.nc"),
    log:
        logs("regrid_weights/{method}"),
    benchmark:
        benchmarks("regrid_weights/{method}")
    conda:
        "../../envs/regrid.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        grid=config["grid"],
        backend=config["regrid"]["backend"],
        config_hash=HASHES["regrid_weights"],
        run_name=config["run_name"],
    script:
        "../../scripts/regrid_weights.py"


rule regrid:
    input:
        raw=results("raw/{year}-{month}.nc"),
        weights=expand(
            results("regrid/weights_{method}.nc"), method=["conservative", *UPSAMPLERS]
        ),
    output:
        results("regrid/{year}-{month}.nc"),
    log:
        logs("regrid/{year}-{month}"),
    benchmark:
        benchmarks("regrid/{year}-{month}")
    conda:
        "../../envs/regrid.yaml"
    threads: 1
    resources:
        mem_mb=heavy_mem_mb,
        runtime=30,
    params:
        methods=["conservative", *UPSAMPLERS],
        config_hash=HASHES["regrid"],
        run_name=config["run_name"],
    script:
        "../../scripts/regrid.py"
