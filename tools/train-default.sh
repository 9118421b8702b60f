#!/usr/bin/env bash
# Reproduces the shipped default text model (models/default) from the Brown
# corpus: BPE tokenizer, token shards, then ds4 train. About 20-30 min on 2 cores.
# usage: tools/train-default.sh [path/to/ds4] [data dir] [out dir]
set -euo pipefail
DS4=${1:-build/ds4}
DATA=${2:-../shared/data/brown}
OUT=${3:-models/default}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$DS4" tokenizer train --in "$DATA/train.txt" --vocab 4096 --out "$WORK/tokenizer.json"
"$DS4" tokenize --tokenizer "$WORK/tokenizer.json" --in "$DATA/train.txt" --out "$WORK/train.bin"
"$DS4" tokenize --tokenizer "$WORK/tokenizer.json" --in "$DATA/val.txt" --out "$WORK/val.bin"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$DS4" train --config configs/default-text.json \
  --tokenizer "$WORK/tokenizer.json" --data "$WORK/train.bin" --val "$WORK/val.bin" --out "$OUT" \
  --steps 400 --batch 16 --seq 256 --lr 2e-3 --warmup 20 --seed 1337 \
  --eval-every 50 --eval-batches 8 --save-every 100
# The shipped checkpoint keeps what inference needs, plus the training log.
rm -f "$OUT/optimizer.safetensors"
"$DS4" eval --model "$OUT" --data "$DATA/val.txt"
