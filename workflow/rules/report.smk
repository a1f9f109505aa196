# Tables and figures of this suite (part of `all`), and the task-count scaling of one model across suites
# (a target of its own: `snakemake results/scaling/<model>/task_count_scaling.png`).
from importlib import resources

# The published averages shipped with mergeflow (package data); an input, so editing it reruns the tables.
PUBLISHED_CSV = str(resources.files("mergeflow.report").joinpath("published.csv"))
SUITE_LABEL = f"{BENCHMARK}, {MODEL}"
# The suites of 8, 14 and 20 tasks, whose main tables `scaling` compares: the paper's for the real models,
# tiny8/14/20 (config/config.yaml, tiny14.yaml, tiny20.yaml) for the tiny one.
SCALING_SUITES = ("paper8", "paper14", "paper20", "tiny8", "tiny14", "tiny20")
# Published numbers are for open_clip models with OpenAI weights; any other model gets none.
_OPEN_CLIP = config["model"].get("open_clip", {})
PUBLISHED_MODEL_FLAG = (
    f"--published-model {_OPEN_CLIP['name']}"
    if config["model"]["source"] == "open_clip" and _OPEN_CLIP["pretrained"] == "openai"
    else ""
)


rule aggregate:
    input:
        reference=f"{SUITE}/eval/reference.csv",
        results=expand(f"{SUITE}/eval/{{method}}.csv", method=METHODS),
        correct=[f"{SUITE}/eval/reference.correct.safetensors"]
        + expand(f"{SUITE}/eval/{{method}}.correct.safetensors", method=METHODS),
        published=PUBLISHED_CSV,
        # Whose experts made the rows (the fetch records; none when finetune trains them here), and where each
        # task's data came from (classnames.json's data record): which published numbers and val splits compare.
        records=[] if FINETUNED["source"] == "finetune" else [f"{RESULTS}/finetuned/{MODEL}/{task}.json" for task in TASKS],
        data=[data_marker(task) for task in TASKS],
    output:
        csv=report(
            f"{SUITE}/tables/main.csv",
            caption="../report/main_table.rst",
            category="Tables",
            subcategory=SUITE_LABEL,
        ),
        markdown=f"{SUITE}/tables/main.md",
        latex=f"{SUITE}/tables/main.tex",
        tasks=f"{SUITE}/tables/tasks.csv",
        png=report(
            f"{SUITE}/figures/rank_sweep.png",
            caption="../report/rank_sweep.rst",
            category="Figures",
            subcategory=SUITE_LABEL,
        ),
        pdf=f"{SUITE}/figures/rank_sweep.pdf",
        per_task_png=report(
            f"{SUITE}/figures/per_task.png",
            caption="../report/per_task.rst",
            category="Figures",
            subcategory=SUITE_LABEL,
        ),
        per_task_pdf=f"{SUITE}/figures/per_task.pdf",
    params:
        tables_dir=lambda wildcards, output: os.path.dirname(output.csv),
        figures_dir=lambda wildcards, output: os.path.dirname(output.png),
        tasks=" ".join(TASKS),
        title=SUITE_LABEL,
        published_model=PUBLISHED_MODEL_FLAG,
        records=lambda wildcards, input: f"--finetuned-records {' '.join(input.records)}" if input.records else "",
        data_dirs=" ".join(data_dir(task) for task in TASKS),
        experts=FINETUNED["source"],
    resources:
        mem_mb=scaled("aggregate", "mem_mb"),
        runtime=scaled("aggregate", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("aggregate", f"{BENCHMARK}/{MODEL}"),
    benchmark:
        benchmark_path("aggregate", f"{BENCHMARK}/{MODEL}")
    shell:
        "mergeflow aggregate --reference {input.reference} --results {input.results} --tasks {params.tasks}"
        " --correct {input.correct} --published {input.published} {params.published_model} {params.records}"
        " --data-dirs {params.data_dirs} --experts {params.experts}"
        " --tables-dir {params.tables_dir} --figures-dir {params.figures_dir} --title {params.title:q} > {log} 2>&1"


# Where test-time adaptation moved weight: one figure per adaptive method, and AdaRank's kept rank.
rule adaptation_figures:
    input:
        f"{SUITE}/eval/{{method}}.learned.safetensors",
    output:
        [f"{SUITE}/figures/{{method}}_{{figure}}.{ext}" for ext in ("png", "pdf")],
    wildcard_constraints:
        method=one_of(ADAPTIVE_ENTRIES),
        figure="coefficients|kept_rank",
    params:
        figures_dir=lambda wildcards, output: os.path.dirname(output[0]),
        tasks=" ".join(TASKS),
        title=SUITE_LABEL,
    # Ready long before the tables: run it while the sweeps run, not after them.
    priority: START_WHEN_READY_PRIORITY
    resources:
        mem_mb=scaled("aggregate", "mem_mb"),
        runtime=scaled("aggregate", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("adaptation_figures", f"{BENCHMARK}/{MODEL}/{{method}}_{{figure}}"),
    benchmark:
        benchmark_path("adaptation_figures", f"{BENCHMARK}/{MODEL}/{{method}}_{{figure}}")
    shell:
        "mergeflow adaptation --learned {input} --method {wildcards.method} --figure {wildcards.figure}"
        " --tasks {params.tasks}"
        " --figures-dir {params.figures_dir} --title {params.title:q} > {log} 2>&1"


# The validation grid of a rank-sweep method (cart in `all`; lowrank_ta on request) as a λ × rank heatmap.
rule lambda_rank:
    input:
        f"{SUITE}/eval/{{method}}.csv",
    output:
        png=report(
            f"{SUITE}/figures/{{method}}_lambda_rank.png",
            caption="../report/lambda_rank.rst",
            category="Figures",
            subcategory=SUITE_LABEL,
        ),
        pdf=f"{SUITE}/figures/{{method}}_lambda_rank.pdf",
    params:
        figures_dir=lambda wildcards, output: os.path.dirname(output.png),
        tasks=" ".join(TASKS),
        title=SUITE_LABEL,
    # Ready long before the tables: run it while the sweeps run, not after them.
    priority: START_WHEN_READY_PRIORITY
    resources:
        mem_mb=scaled("lambda_rank", "mem_mb"),
        runtime=scaled("lambda_rank", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("lambda_rank", f"{BENCHMARK}/{MODEL}/{{method}}"),
    benchmark:
        benchmark_path("lambda_rank", f"{BENCHMARK}/{MODEL}/{{method}}")
    shell:
        "mergeflow lambda-rank --results {input} --tasks {params.tasks} --figures-dir {params.figures_dir}"
        " --title {params.title:q} > {log} 2>&1"


# Spectra of centered vs original task vectors, from the SVD factors `decompose` caches for the sweeps.
rule spectrum:
    input:
        centered=f"{RESULTS}/svd/{MODEL}/{BENCHMARK}/centered.safetensors",
        original=f"{RESULTS}/svd/{MODEL}/{BENCHMARK}/original.safetensors",
    output:
        table=report(
            f"{SUITE}/tables/spectrum.csv",
            caption="../report/spectrum_table.rst",
            category="Tables",
            subcategory=SUITE_LABEL,
        ),
        energy_png=report(
            f"{SUITE}/figures/spectrum_energy.png",
            caption="../report/spectrum_energy.rst",
            category="Figures",
            subcategory=SUITE_LABEL,
        ),
        energy_pdf=f"{SUITE}/figures/spectrum_energy.pdf",
        error_png=report(
            f"{SUITE}/figures/spectrum_error_interference.png",
            caption="../report/spectrum_error_interference.rst",
            category="Figures",
            subcategory=SUITE_LABEL,
        ),
        error_pdf=f"{SUITE}/figures/spectrum_error_interference.pdf",
    params:
        figures_dir=lambda wildcards, output: os.path.dirname(output.energy_png),
        title=SUITE_LABEL,
    threads: 2
    # Ready long before the tables: run it while the sweeps run, not after them.
    priority: START_WHEN_READY_PRIORITY
    resources:
        mem_mb=scaled("spectrum", "mem_mb"),
        runtime=scaled("spectrum", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("spectrum", f"{BENCHMARK}/{MODEL}"),
    benchmark:
        benchmark_path("spectrum", f"{BENCHMARK}/{MODEL}")
    shell:
        "mergeflow spectrum --centered {input.centered} --original {input.original} --table {output.table}"
        " --figures-dir {params.figures_dir} --title {params.title:q} > {log} 2>&1"


# Needs the main tables of at least two of SCALING_SUITES for the model; run after their configs.
rule scaling:
    wildcard_constraints:
        scaling_model="[A-Za-z0-9_.-]+",
    input:
        # The main tables of the paper suites that have run for this model, as found when the DAG is built.
        tables=lambda wildcards: [
            path
            for path in expand(f"{RESULTS}/{{suite}}/{wildcards.scaling_model}/tables/main.csv", suite=SCALING_SUITES)
            if os.path.exists(path)
        ],
    output:
        csv=report(
            f"{RESULTS}/scaling/{{scaling_model}}/task_count_scaling.csv",
            caption="../report/scaling_table.rst",
            category="Task-count scaling",
            subcategory="{scaling_model}",
        ),
        markdown=f"{RESULTS}/scaling/{{scaling_model}}/task_count_scaling.md",
        latex=f"{RESULTS}/scaling/{{scaling_model}}/task_count_scaling.tex",
        png=report(
            f"{RESULTS}/scaling/{{scaling_model}}/task_count_scaling.png",
            caption="../report/scaling.rst",
            category="Task-count scaling",
            subcategory="{scaling_model}",
        ),
        pdf=f"{RESULTS}/scaling/{{scaling_model}}/task_count_scaling.pdf",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.csv),
    resources:
        mem_mb=scaled("scaling", "mem_mb"),
        runtime=scaled("scaling", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("scaling", "{scaling_model}"),
    benchmark:
        benchmark_path("scaling", "{scaling_model}")
    shell:
        "mergeflow scaling --tables {input.tables} --out-dir {params.out_dir} --title {wildcards.scaling_model:q}"
        " > {log} 2>&1"
