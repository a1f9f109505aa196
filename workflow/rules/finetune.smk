# θ_t per task: fine-tuned here by the docs/methods.md protocol (or, with finetune.shipped, the shipped encoder when its
# recipe is exactly this job's: mergeflow.shipped.finetuned), or fetched from a published source.
if FINETUNED["source"] == "finetune":

    rule finetune:
        input:
            model=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
            head=f"{RESULTS}/heads/{{model}}/{{task}}.safetensors",
            data=f"{RESULTS}/data/{{task}}/classnames.json",
            shipped=shipped_finetuned_files,
        output:
            f"{RESULTS}/finetuned/{{model}}/{{task}}.safetensors",
        params:
            model_dir=lambda wildcards, input: os.path.dirname(input.model),
            data_dir=lambda wildcards, input: os.path.dirname(input.data),
            settings=config["finetune"],
            micro_batch=config["finetune"].get("micro_batch_size", config["finetune"]["batch_size"]),
            device=device_flag(),
            shipped=shipped_finetuned_flag(),
        threads: 1
        resources:
            gpu=GPUS_PER_JOB,
            mem_mb=scaled("finetune", "mem_mb"),
            runtime=scaled("finetune", "runtime"),
        conda:
            "../../envs/mergeflow.yaml"
        log:
            log_path("finetune", "{model}/{task}"),
        benchmark:
            benchmark_path("finetune", "{model}/{task}")
        shell:
            "mergeflow finetune --model-dir {params.model_dir} --head {input.head}"
            " --data-dir {params.data_dir} --steps {params.settings[steps]}"
            " --batch-size {params.settings[batch_size]} --micro-batch-size {params.micro_batch}"
            " --lr {params.settings[lr]}"
            " --weight-decay {params.settings[weight_decay]} --warmup-steps {params.settings[warmup_steps]}"
            " --grad-clip {params.settings[grad_clip]} --seed {params.settings[seed]} {params.shipped}"
            " --out {output} --threads {threads} {params.device} > {log} 2>&1"

else:

    rule fetch_finetuned:
        input:
            model=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
        output:
            encoder=f"{RESULTS}/finetuned/{{model}}/{{task}}.safetensors",
            record=f"{RESULTS}/finetuned/{{model}}/{{task}}.json",
        params:
            source=as_json(FINETUNED),
            open_clip_name=config["model"].get("open_clip", {}).get("name", MODEL),
            cache=hub_cache_flag(),
        threads: 1
        resources:
            mem_mb=scaled("fetch_finetuned", "mem_mb"),
            runtime=scaled("fetch_finetuned", "runtime"),
        conda:
            "../../envs/mergeflow.yaml"
        log:
            log_path("fetch_finetuned", "{model}/{task}"),
        benchmark:
            benchmark_path("fetch_finetuned", "{model}/{task}")
        shell:
            "mergeflow fetch-finetuned --source {params.source:q} --model {params.open_clip_name}"
            " --task {wildcards.task} --pretrained {input.model} {params.cache} --out {output.encoder} > {log} 2>&1"


# One encoder fine-tuned on all tasks at once with the finetune block's recipe (mergeflow.training.multitask): the
# multi-task reference row. It trains here whatever the experts' source (the config check asks for a finetune block);
# with finetune.shipped, this benchmark's shipped encoder is copied instead when its recipe is exactly this job's.
if MULTITASK:

    rule finetune_multitask:
        input:
            model=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
            heads=[head_path(task) for task in TASKS],
            data=[data_marker(task) for task in TASKS],
            shipped=shipped_multitask_files(),
        output:
            f"{RESULTS}/finetuned/{{model}}/multitask/{BENCHMARK}.safetensors",
        params:
            model_dir=lambda wildcards, input: os.path.dirname(input.model),
            tasks=" ".join(TASKS),
            data_dirs=" ".join(data_dir(task) for task in TASKS),
            settings=config["finetune"],
            micro_batch=config["finetune"].get("micro_batch_size", config["finetune"]["batch_size"]),
            device=device_flag(),
            shipped=shipped_finetuned_flag(),
        threads: 1
        # T × finetune.steps in one job, the longest of a tiny run: it starts first and the experts fill the other
        # cores, instead of starting after them and running alone.
        priority: START_WHEN_READY_PRIORITY
        resources:
            gpu=GPUS_PER_JOB,
            mem_mb=scaled("finetune_multitask", "mem_mb"),
            runtime=scaled("finetune_multitask", "runtime"),
        conda:
            "../../envs/mergeflow.yaml"
        log:
            log_path("finetune_multitask", f"{{model}}/{BENCHMARK}"),
        benchmark:
            benchmark_path("finetune_multitask", f"{{model}}/{BENCHMARK}")
        shell:
            "mergeflow finetune-multitask --model-dir {params.model_dir} --tasks {params.tasks}"
            " --heads {input.heads} --data-dirs {params.data_dirs} --steps {params.settings[steps]}"
            " --batch-size {params.settings[batch_size]} --micro-batch-size {params.micro_batch}"
            " --lr {params.settings[lr]}"
            " --weight-decay {params.settings[weight_decay]} --warmup-steps {params.settings[warmup_steps]}"
            " --grad-clip {params.settings[grad_clip]} --seed {params.settings[seed]} {params.shipped}"
            " --out {output} --threads {threads} {params.device} > {log} 2>&1"
