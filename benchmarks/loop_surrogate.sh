#!/usr/bin/env bash
# The loop on the CIRR text surrogate: the same first N dev queries for every row.
set -u
cd "$(dirname "$0")/.."
C=${C:-../shared/data/benchmarks/cirr_gallery_captions/cirr_labeled_images_cir_cleaned.json}
A=${A:-../shared/data/benchmarks}
N=${N:-20}  # needs the llama.cpp server of RESULTS.md on 127.0.0.1:8080
export HF_HUB_OFFLINE=1 AGENT_CIR_CACHE=${AGENT_CIR_CACHE:-runs/cache.sqlite}
run() { name=$1; shift; /usr/bin/time -f "$name wall %e s" .venv/bin/agent-cir eval --dataset cirr --split val --annotations $A --gallery-captions $C --limit $N --max-concurrency 1 -q "$@" --out runs/$name; }
run ensemble_$N --config surrogate_rewrite_ensemble
run loop1_$N --config surrogate_loop --set verify.k=5 --set models.verifier.max_tokens=16 --set refine.max_rounds=1
run loop0_$N --config surrogate_loop --set verify.k=5 --set models.verifier.max_tokens=16 --set refine.max_rounds=0
echo ALL DONE
