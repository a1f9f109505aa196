# mergeflow: merge CLIP image encoders (CART and baselines), evaluate, and tabulate — every stage cached.
from snakemake.utils import min_version, validate

min_version("8.20")


# A --configfile is a complete config (config/paper/*.yaml are); only without one is the tiny default
# loaded, so that keys of the default never leak into another benchmark. --config key=value edits either.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/report.smk"


onstart:
    start_job_server()


onsuccess:
    stop_job_servers()


onerror:
    stop_job_servers()


rule all:
    input:
        final_outputs(),
    default_target: True
