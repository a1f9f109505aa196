# θ_0 and the text tower: open_clip's published weights for real models, a short contrastive
# pre-training for the embedded tiny model, or the shipped result of that pre-training when the config is
# its recipe (mergeflow.shipped.theta0). All write the same model directory.
if MODEL_SOURCE == "open_clip":

    rule fetch_pretrained:
        output:
            image_encoder=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
            text=f"{RESULTS}/models/{{model}}/text.safetensors",
            description=f"{RESULTS}/models/{{model}}/model.json",
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output.image_encoder),
            open_clip=config["model"].get("open_clip", {}),
            image_size=image_size(),
            cache=hub_cache_flag(),
        threads: 1
        resources:
            mem_mb=scaled("fetch_pretrained", "mem_mb"),
            runtime=scaled("fetch_pretrained", "runtime"),
        conda:
            "../../envs/mergeflow.yaml"
        log:
            log_path("fetch_pretrained", "{model}"),
        benchmark:
            benchmark_path("fetch_pretrained", "{model}")
        shell:
            "mergeflow fetch-pretrained --model {params.open_clip[name]} --pretrained {params.open_clip[pretrained]}"
            " --image-size {params.image_size} {params.cache} --out {params.out_dir} > {log} 2>&1"

elif SHIPPED_PRETRAINED:

    rule install_pretrained:
        input:
            [
                f"{SHIPPED_PRETRAINED}/{name}"
                for name in ("recipe.json", "model.json", "text.safetensors", "pretrained.safetensors")
            ],
        output:
            image_encoder=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
            text=f"{RESULTS}/models/{{model}}/text.safetensors",
            description=f"{RESULTS}/models/{{model}}/model.json",
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output.image_encoder),
            shipped=lambda wildcards, input: os.path.dirname(input[0]),
        threads: 1
        resources:
            mem_mb=scaled("pretrain", "mem_mb"),
            runtime=scaled("pretrain", "runtime"),
        conda:
            "../../envs/mergeflow.yaml"
        log:
            log_path("install_pretrained", "{model}"),
        benchmark:
            benchmark_path("install_pretrained", "{model}")
        shell:
            "mergeflow install-pretrained --shipped {params.shipped} --out {params.out_dir} > {log} 2>&1"

else:

    rule pretrain:
        output:
            image_encoder=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
            text=f"{RESULTS}/models/{{model}}/text.safetensors",
            description=f"{RESULTS}/models/{{model}}/model.json",
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output.image_encoder),
            architecture=as_json(config["model"]["architecture"]),
            tasks=" ".join(pretrain_tasks()),
            settings=config["pretrain"],
            domain_style=config["data"]["domain_style"],
            device=device_flag(),
        threads: 2
        resources:
            gpu=GPUS_PER_JOB,
            mem_mb=scaled("pretrain", "mem_mb"),
            runtime=scaled("pretrain", "runtime"),
        conda:
            "../../envs/mergeflow.yaml"
        log:
            log_path("pretrain", "{model}"),
        benchmark:
            benchmark_path("pretrain", "{model}")
        shell:
            "mergeflow pretrain --name {wildcards.model} --architecture {params.architecture:q} --tasks {params.tasks}"
            " --images-per-task {params.settings[images_per_task]} --caption-noise {params.settings[caption_noise]}"
            " --domain-style {params.domain_style}"
            " --data-seed {params.settings[data_seed]} --steps {params.settings[steps]}"
            " --batch-size {params.settings[batch_size]} --lr {params.settings[lr]}"
            " --weight-decay {params.settings[weight_decay]} --warmup-steps {params.settings[warmup_steps]}"
            " --seed {params.settings[seed]} --out {params.out_dir}"
            " --threads {threads} {params.device} > {log} 2>&1"
