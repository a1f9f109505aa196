# SVD once per (task, matrix), reused by every rank and coefficient of the spectral methods' sweeps.
rule decompose:
    input:
        pretrained=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
        finetuned=[f"{RESULTS}/finetuned/{{model}}/{task}.safetensors" for task in TASKS],
    output:
        f"{RESULTS}/svd/{{model}}/{BENCHMARK}/{{kind}}.safetensors",
    params:
        device=device_flag(),
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=scaled("decompose", "mem_mb"),
        runtime=scaled("decompose", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("decompose", f"{{model}}/{BENCHMARK}/{{kind}}"),
    benchmark:
        benchmark_path("decompose", f"{{model}}/{BENCHMARK}/{{kind}}")
    shell:
        "mergeflow decompose --pretrained {input.pretrained} --finetuned {input.finetuned} --kind {wildcards.kind}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"


# One job per method: merge over the method's grid in memory, pick on val, evaluate test once (and keep
# the per-image test correctness of the selected setting, for the tables' bootstrap intervals).
rule merge_eval:
    input:
        unpack(factor_inputs),
        unpack(statistics_inputs),
        **task_inputs(),
        reference=f"{SUITE}/eval/reference.csv",
    output:
        table=f"{SUITE}/eval/{{method}}.csv",
        correct=f"{SUITE}/eval/{{method}}.correct.safetensors",
    wildcard_constraints:
        method=one_of(WHOLE_SWEEPS),
    params:
        tasks=task_flags(),
        grid=lambda wildcards: as_json(sweep_grid(wildcards)),
        factors=lambda wildcards, input: f"--factors {input.factors}" if "factors" in input.keys() else "",
        statistics=lambda wildcards, input: (
            f"--task-statistics {' '.join(input.statistics)}" if "statistics" in input.keys() else ""
        ),
        training=lambda wildcards: merge_training_flags(wildcards.method),
        evaluation=evaluation_flags(),
        device=device_flag(),
    threads: 1
    # The longest sweeps start first, so that the short ones fill the other cores instead of trailing alone.
    priority: sweep_priority
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=scaled("merge_eval", "mem_mb"),
        runtime=scaled("merge_eval", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("merge_eval", f"{BENCHMARK}/{MODEL}/{{method}}"),
    benchmark:
        benchmark_path("merge_eval", f"{BENCHMARK}/{MODEL}/{{method}}")
    shell:
        "mergeflow merge-eval --method {wildcards.method} --grid {params.grid:q} {params.tasks} {params.factors}"
        " {params.statistics} {params.training}"
        " --reference {input.reference} {params.evaluation}"
        " --out {output.table} --correct {output.correct} --threads {threads} {params.device} > {log} 2>&1"


# A sweep longer than resources.max_runtime_min: one job per run of ranks (each rank's settings whole, its
# val-best one evaluated on test), then the whole grid's val rows select again in combine_sweep.
use rule merge_eval as merge_eval_part with:
    output:
        table=f"{SUITE}/eval/parts/{{method}}/{{part}}.csv",
        correct=f"{SUITE}/eval/parts/{{method}}/{{part}}.correct.safetensors",
    wildcard_constraints:
        method=one_of(SPLIT_SWEEPS),
        part=r"[1-9][0-9]*",
    log:
        log_path("merge_eval", f"{BENCHMARK}/{MODEL}/{{method}}.part{{part}}"),
    benchmark:
        benchmark_path("merge_eval", f"{BENCHMARK}/{MODEL}/{{method}}.part{{part}}")


rule combine_sweep:
    input:
        tables=lambda wildcards: sweep_part_files(wildcards.method, "csv"),
        correct=lambda wildcards: sweep_part_files(wildcards.method, "correct.safetensors"),
    output:
        table=f"{SUITE}/eval/{{method}}.csv",
        correct=f"{SUITE}/eval/{{method}}.correct.safetensors",
    wildcard_constraints:
        method=one_of(SPLIT_SWEEPS),
    params:
        grid=lambda wildcards: as_json(config["methods"][wildcards.method]),
    threads: 1
    resources:
        mem_mb=scaled("aggregate", "mem_mb"),
        runtime=scaled("aggregate", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("combine_sweep", f"{BENCHMARK}/{MODEL}/{{method}}"),
    benchmark:
        benchmark_path("combine_sweep", f"{BENCHMARK}/{MODEL}/{{method}}")
    shell:
        "mergeflow combine-sweep --method {wildcards.method} --grid {params.grid:q} --parts {input.tables}"
        " --parts-correct {input.correct} --out {output.table} --correct {output.correct} > {log} 2>&1"


# A test-time adaptive method (AdaMerging, AdaMerging + CART, AdaRank): coefficients learned on each task's
# unlabeled test images (the papers' transductive protocol; labels are read only to measure accuracy).
rule adapt_eval:
    input:
        unpack(cart_eval_input),
        **task_inputs(),
        reference=f"{SUITE}/eval/reference.csv",
    output:
        table=f"{SUITE}/eval/{{method}}.csv",
        learned=f"{SUITE}/eval/{{method}}.learned.safetensors",
        entropy=f"{SUITE}/eval/{{method}}.entropy.csv",
        correct=f"{SUITE}/eval/{{method}}.correct.safetensors",
    wildcard_constraints:
        method=one_of(ADAPTIVE_ENTRIES),
    params:
        tasks=task_flags(),
        settings=lambda wildcards: as_json(config["methods"][wildcards.method]),
        cart=lambda wildcards, input: f"--cart-eval {input.cart}" if "cart" in input.keys() else "",
        evaluation=evaluation_flags(),
        device=device_flag(),
    threads: 1
    # An adaptation is as long as a long sweep, and it waits for cart's: it starts as soon as it can.
    priority: adaptation_priority
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=scaled("adapt_eval", "mem_mb"),
        runtime=scaled("adapt_eval", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("adapt_eval", f"{BENCHMARK}/{MODEL}/{{method}}"),
    benchmark:
        benchmark_path("adapt_eval", f"{BENCHMARK}/{MODEL}/{{method}}")
    shell:
        "mergeflow adapt-eval --method {wildcards.method} --settings {params.settings:q} {params.tasks} {params.cart}"
        " --reference {input.reference} {params.evaluation} --learned {output.learned} --entropy {output.entropy}"
        " --out {output.table} --correct {output.correct} --threads {threads} {params.device} > {log} 2>&1"
