# Vertical physics priors and the HDF5 store read by training and evaluation: one job per month
# of a split, then the split's store as virtual datasets over its months.


rule priors_month:
    input:
        raw=results("raw/{year}-{month}.nc"),
        regrid=results("regrid/{year}-{month}.nc"),
        statics=results("raw/statics.nc"),
    output:
        results("priors/{split}/{year}-{month}.h5"),
    log:
        logs("priors/{split}/{year}-{month}"),
    benchmark:
        benchmarks("priors/{split}/{year}-{month}")
    conda:
        "../../envs/priors.yaml"
    threads: 1
    resources:
        mem_mb=heavy_mem_mb,
        runtime=60,
    params:
        period=get_split_period,
        priors=config["priors"]["names"],
        upsample=config["regrid"]["upsample"],
        scale_factor=config["grid"]["scale_factor"],
        config_hash=get_store_hash,
        run_name=config["run_name"],
    script:
        "../../scripts/priors.py"


rule priors:
    input:
        unpack(get_priors_input),
    output:
        results("priors/{split}.h5"),
    log:
        logs("priors/{split}"),
    benchmark:
        benchmarks("priors/{split}")
    conda:
        "../../envs/priors.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        config_hash=get_store_hash,
        run_name=config["run_name"],
    script:
        "../../scripts/store.py"
