#!/usr/bin/env bash
# Wall time and peak memory of the default tiny8 run from an empty results/ directory, then of a
# second invocation (which must have nothing to do). Run from the repository root:
#   bash benchmarks/default_run.sh [CORES]
# It deletes results/ and .snakemake/ first. Requires GNU time at /usr/bin/time.
set -euo pipefail
cores="${1:-2}"
out="benchmarks/out"
mkdir -p "$out"
rm -rf results/* .snakemake
/usr/bin/time -v snakemake --cores "$cores" --quiet all > "$out/first_run.log" 2>&1
/usr/bin/time -v snakemake --cores "$cores" > "$out/second_run.log" 2>&1
for run in first_run second_run; do
    wall=$(grep "Elapsed (wall clock)" "$out/$run.log" | awk '{print $NF}')
    rss=$(grep "Maximum resident set size" "$out/$run.log" | awk '{print $NF}')
    echo "$run: wall $wall, peak RSS of one process $((rss / 1024)) MiB"
done
grep -q "Nothing to be done" "$out/second_run.log" && echo "second run: nothing to be done"
