#!/usr/bin/env bash
# The CPU benchmark of record (BENCHMARKS.md): every recipe of it in order of importance, into
# RUNS (default ../bench-runs, outside the work tree). Resumable: run it again and it continues.
#   DSBS_DATA_DIR=../shared/datasets bash benchmarks/run_cpu_benchmark.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-../bench-runs}
dsbs=${DSBS:-.venv/bin/dsbs}
# The unlabeled grid first: the cells of the others were made under the old split order and rerun after it.
for recipe in cpu-esnli-unlabeled cpu-esnli-rationales cpu-esnli-core cpu-esnli-prefix cpu-esnli cpu-svamp \
        cpu-esnli-levers cpu-esnli-budget cpu-svamp-last; do
    case $recipe in
        cpu-svamp*) out=$runs/cpu-svamp ;;
        cpu-esnli-unlabeled | cpu-esnli-rationales) out=$runs/$recipe ;;
        *) out=$runs/cpu-esnli ;;
    esac
    "$dsbs" experiment "recipes/$recipe.yaml" --output "$out" || exit $?
done
for out in cpu-esnli-unlabeled cpu-esnli-rationales cpu-esnli cpu-svamp; do "$dsbs" report "$runs/$out"; done
