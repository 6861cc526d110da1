# GeoDiff: coarse temperature on pressure levels -> fine fields, as one workflow.
# See README.md; every key is described in workflow/schemas/config.schema.yaml.
from snakemake.utils import min_version, validate

from geodiff.workflow import check_config, check_keys

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


check_keys(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
validate(config, "workflow/schemas/config.schema.yaml", set_default=True)
check_config(config)


include: "workflow/rules/common.smk"


wildcard_constraints:
    year=r"\d{4}",
    month=r"\d{2}",
    split="|".join(SPLITS),
    method="conservative|bicubic|bilinear",


include: "workflow/rules/data.smk"
include: "workflow/rules/regrid.smk"
include: "workflow/rules/priors.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/downscale.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),


onsuccess:
    print_summary(results("summary.md"))
