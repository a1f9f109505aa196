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


# One job per method: merge over the method's grid in memory, pick on val, evaluate test once.
rule merge_eval:
    input:
        unpack(factor_inputs),
        **task_inputs(),
        reference=f"{SUITE}/eval/reference.csv",
    output:
        f"{SUITE}/eval/{{method}}.csv",
    wildcard_constraints:
        method=one_of(STATIC_METHODS),
    params:
        tasks=task_flags(),
        grid=lambda wildcards: as_json(config["methods"][wildcards.method]),
        factors=lambda wildcards, input: f"--factors {input.factors}" if "factors" in input.keys() else "",
        evaluation=evaluation_flags(),
        device=device_flag(),
    threads: 1
    # The longest sweeps start first, so that the short ones fill the other cores instead of trailing alone.
    priority: lambda wildcards: sweep_points(wildcards.method)
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
        " --reference {input.reference} {params.evaluation}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"


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
    wildcard_constraints:
        method=one_of(ADAPTIVE_ENTRIES),
    params:
        tasks=task_flags(),
        settings=lambda wildcards: as_json(config["methods"][wildcards.method]),
        cart=lambda wildcards, input: f"--cart-eval {input.cart}" if "cart" in input.keys() else "",
        evaluation=evaluation_flags(),
        device=device_flag(),
    threads: 1
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
        " --out {output.table} --threads {threads} {params.device} > {log} 2>&1"
