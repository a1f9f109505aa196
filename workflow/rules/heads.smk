rule build_head:
    input:
        model=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
        text=f"{RESULTS}/models/{{model}}/text.safetensors",
        classnames=f"{RESULTS}/data/{{task}}/classnames.json",
    output:
        f"{RESULTS}/heads/{{model}}/{{task}}.safetensors",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        data_dir=lambda wildcards, input: os.path.dirname(input.classnames),
        device=device_flag(),
        class_texts=head_class_texts(),
    threads: 1
    # Every fine-tune waits on the heads; building them all first lets the multi-task job start before the experts.
    priority: START_WHEN_READY_PRIORITY
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=scaled("build_head", "mem_mb"),
        runtime=scaled("build_head", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("build_head", "{model}/{task}"),
    benchmark:
        benchmark_path("build_head", "{model}/{task}")
    shell:
        "mergeflow build-head --model-dir {params.model_dir} --data-dir {params.data_dir} --class-texts {params.class_texts}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"
