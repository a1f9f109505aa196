rule finetune:
    input:
        model=f"{RESULTS}/models/{{model}}/pretrained.safetensors",
        head=f"{RESULTS}/heads/{{model}}/{{task}}.safetensors",
        data=f"{RESULTS}/data/{{task}}/classnames.json",
    output:
        f"{RESULTS}/finetuned/{{model}}/{{task}}.safetensors",
    params:
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        data_dir=lambda wildcards, input: os.path.dirname(input.data),
        settings=config["finetune"],
        device=device_flag(),
    threads: 1
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("finetune", "{model}/{task}"),
    benchmark:
        benchmark_path("finetune", "{model}/{task}")
    shell:
        "mergeflow finetune --model-dir {params.model_dir} --head {input.head}"
        " --data-dir {params.data_dir} --steps {params.settings[steps]}"
        " --batch-size {params.settings[batch_size]} --lr {params.settings[lr]}"
        " --weight-decay {params.settings[weight_decay]} --warmup-steps {params.settings[warmup_steps]}"
        " --grad-clip {params.settings[grad_clip]} --seed {params.settings[seed]}"
        " --out {output} --threads {threads} {params.device} > {log} 2>&1"
