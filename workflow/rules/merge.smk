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
