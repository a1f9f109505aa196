# The data stage of data-based merges: one fine-tuned encoder's statistics on a seeded sample of its task's
# training images (task_statistics.images), cached per (model, task) and shared by every sweep that reads them.
rule task_statistics:
    input:
        model=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
        finetuned=f"{RESULTS}/finetuned/{{model}}/{{task}}.safetensors",
        head=f"{RESULTS}/heads/{{model}}/{{task}}.safetensors",
        data=f"{RESULTS}/data/{{task}}/classnames.json",
    output:
        f"{RESULTS}/statistics/{{model}}/{{task}}/{{statistic}}.safetensors",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        data_dir=lambda wildcards, input: os.path.dirname(input.data),
        sample=training_image_flags(),
        device=device_flag(),
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=scaled("task_statistics", "mem_mb"),
        runtime=scaled("task_statistics", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("task_statistics", "{model}/{task}/{statistic}"),
    benchmark:
        benchmark_path("task_statistics", "{model}/{task}/{statistic}")
    shell:
        "mergeflow task-statistics --kind {wildcards.statistic} --model-dir {params.model_dir}"
        " --finetuned {input.finetuned} --data {params.data_dir} --head {input.head} {params.sample}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"
