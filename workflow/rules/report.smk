rule aggregate:
    input:
        reference=f"{SUITE}/eval/reference.csv",
        results=expand(f"{SUITE}/eval/{{method}}.csv", method=METHODS),
    output:
        csv=report(
            f"{SUITE}/tables/main.csv",
            caption="../report/main_table.rst",
            category="Tables",
        ),
        markdown=f"{SUITE}/tables/main.md",
        latex=f"{SUITE}/tables/main.tex",
        png=report(
            f"{SUITE}/figures/rank_sweep.png",
            caption="../report/rank_sweep.rst",
            category="Figures",
        ),
        pdf=f"{SUITE}/figures/rank_sweep.pdf",
    params:
        tables_dir=lambda wildcards, output: os.path.dirname(output.csv),
        figures_dir=lambda wildcards, output: os.path.dirname(output.png),
        tasks=" ".join(TASKS),
        title=f"{BENCHMARK}, {MODEL}",
    resources:
        mem_mb=scaled("aggregate", "mem_mb"),
        runtime=scaled("aggregate", "runtime"),
    conda:
        "../../envs/mergeflow.yaml"
    log:
        log_path("aggregate", f"{BENCHMARK}/{MODEL}"),
    benchmark:
        benchmark_path("aggregate", f"{BENCHMARK}/{MODEL}")
    shell:
        "mergeflow aggregate --reference {input.reference} --results {input.results} --tasks {params.tasks}"
        " --tables-dir {params.tables_dir} --figures-dir {params.figures_dir} --title {params.title:q} > {log} 2>&1"
