rule prepare_data:
    output:
        images=[f"{RESULTS}/data/{{task}}/{split}_images.npy" for split in data_splits()],
        labels=[f"{RESULTS}/data/{{task}}/{split}_labels.npy" for split in data_splits()],
        classnames=f"{RESULTS}/data/{{task}}/classnames.json",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.classnames),
        source=config["data"]["source"],
        image_size=image_size(),
        options=data_source_flags(),
    # Real images are decoded in worker processes; the tiny generator is single-threaded.
    threads: 1 if config["data"]["source"] == "tiny" else 4
    # Every later stage reads the data; preparing all tasks first lets the multi-task fine-tune start before the experts.
    priority: START_WHEN_READY_PRIORITY
    resources:
        mem_mb=scaled("prepare_data", "mem_mb"),
        runtime=scaled("prepare_data", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("prepare_data", "{task}"),
    benchmark:
        benchmark_path("prepare_data", "{task}")
    shell:
        "mergeflow prepare-data --source {params.source} --task {wildcards.task}"
        " --image-size {params.image_size} {params.options} --workers {threads} --out {params.out_dir} > {log} 2>&1"
