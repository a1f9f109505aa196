#!/usr/bin/env bash
# Time to build the whole DAG of every paper config (`snakemake -n`, nothing run, nothing downloaded),
# against the tiny default config's DAG in the same session as the baseline. Run from the repository root:
#   bash benchmarks/paper_dag.sh
# Uses a scratch working directory so that existing results/ do not change what is planned.
set -euo pipefail
repo="$(pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
seconds() {
    local start end
    start=$(date +%s.%N)
    snakemake -n --snakefile "$repo/Snakefile" --directory "$scratch" "$@" > "$scratch/dry.log" 2>&1
    end=$(date +%s.%N)
    jobs=$(awk '$1 == "total" {print $2}' "$scratch/dry.log")
    echo "$(python3 -c "print($end - $start)") $jobs"
}
mkdir -p "$scratch/config" && cp config/config.yaml "$scratch/config/config.yaml"
read -r base base_jobs < <(seconds)
printf "%-22s %6.1f s  %4s jobs  (baseline)\n" "tiny8 (default)" "$base" "$base_jobs"
for config in config/paper/*.yaml; do
    read -r t jobs < <(seconds --configfile "$repo/$config")
    printf "%-22s %6.1f s  %4s jobs  %.2f× baseline\n" "$(basename "$config" .yaml)" "$t" "$jobs" "$(python3 -c "print($t / $base)")"
done
