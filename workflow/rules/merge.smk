# One job per method: merge over the method's grid in memory, pick on val, evaluate test once.
rule merge_eval:
    input:
        **task_inputs(),
        reference=f"{SUITE}/eval/reference.csv",
    output:
        f"{SUITE}/eval/{{method}}.csv",
    params:
        tasks=task_flags(),
        grid=lambda wildcards: as_json(config["methods"][wildcards.method]),
        batch_size=config["evaluation"]["batch_size"],
        device=device_flag(),
    threads: 1
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("merge_eval", f"{BENCHMARK}/{MODEL}/{{method}}"),
    benchmark:
        benchmark_path("merge_eval", f"{BENCHMARK}/{MODEL}/{{method}}")
    shell:
        "mergeflow merge-eval --method {wildcards.method} --grid {params.grid:q} {params.tasks}"
        " --reference {input.reference} --batch-size {params.batch_size}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"
