# Zero-shot and individual fine-tuned accuracies: the reference rows of every table and the
# denominators of normalized accuracy.
rule evaluate_reference:
    input:
        **task_inputs(),
    output:
        f"{SUITE}/eval/reference.csv",
    params:
        tasks=task_flags(),
        evaluation=evaluation_flags(),
        device=device_flag(),
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=scaled("evaluate_reference", "mem_mb"),
        runtime=scaled("evaluate_reference", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("evaluate_reference", f"{BENCHMARK}/{MODEL}"),
    benchmark:
        benchmark_path("evaluate_reference", f"{BENCHMARK}/{MODEL}")
    shell:
        "mergeflow evaluate-reference {params.tasks} {params.evaluation}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"
