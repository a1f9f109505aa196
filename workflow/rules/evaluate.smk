# Zero-shot and individual fine-tuned accuracies: the reference rows of every table and the
# denominators of normalized accuracy; with their per-image test correctness for the tables' intervals.
# With `multitask`, the multi-task encoder's accuracies too (a column and a row of their own).
rule evaluate_reference:
    input:
        **task_inputs(),
        **({"multitask": multitask_path()} if MULTITASK else {}),
    output:
        table=f"{SUITE}/eval/reference.csv",
        correct=f"{SUITE}/eval/reference.correct.safetensors",
    params:
        tasks=task_flags(),
        evaluation=evaluation_flags(),
        multitask=f" --multitask {multitask_path()}" if MULTITASK else "",
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
        "mergeflow evaluate-reference {params.tasks} {params.evaluation}{params.multitask}"
        " --out {output.table} --correct {output.correct} --threads {threads} {params.device} > {log} 2>&1"
