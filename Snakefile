# mergeflow: merge CLIP image encoders (CART and baselines), evaluate, and tabulate — every stage cached.
import sys

from snakemake.utils import min_version, validate

from mergeflow.dag.config_check import ConfigError, check_config, command_line_values, load_schema

min_version("8.20")


# A --configfile is a complete config (config/paper/*.yaml are); only without one is the tiny default
# loaded, so that keys of the default never leak into another benchmark. --config key=value edits either.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
# `--config job_server=false` arrives as the string 'false' (and every value of a nested `--config` as a
# string): read such strings as the booleans, numbers and nulls the schema expects there.
command_line_values(config, load_schema(SCHEMA))
# Every mistake in the config is reported here, as one message, before the DAG is built or any job starts.
try:
    check_config(config, SCHEMA, repository=workflow.basedir)
except ConfigError as err:
    print(err, file=sys.stderr)
    sys.exit(1)
# The config is valid; this fills in the schema's defaults.
validate(config, SCHEMA)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/statistics.smk"
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
