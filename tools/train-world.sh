#!/usr/bin/env bash
# Reproduces the shipped default world model (models/default): a text+video
# backbone (SPEC §3) trained by ds4 from scratch on 2 cores:
#   1. BPE tokenizer on the Brown corpus (4096 ids incl. the 6 specials)
#   2. video tokenizer: ds4 vtok train on its own clips (ds4 world gen, train
#      4096 x 2 s, val 16 x 2 s), FSQ 8,5,5,5 = 1000 codes, 4 frames x 8x8 px
#      per code, --head 512, 5000 steps (~20 min on a quiet 2-core machine)
#   3. backbone clips: ds4 world gen (train 2048 x 4 s, val 16 x 4 s, 64x64, 24 fps)
#   4. backbone: ds4 video train (configs/world.json, 2.75M parameters), rows of
#      caption (its first 64 tokens) + 8 latent frames (1.33 s) mixed with Brown
#      text rows (20%)
#   5. ds4 video export: F16 backbone + video tokenizer into OUT (about 11 MB)
# Each stage is skipped when its output exists; the backbone resumes from
# WORK/model (same STEPS: the cosine schedule is set by STEPS), so an
# interrupted run continues where its last checkpoint left off.
# On a busy machine use OMP_NUM_THREADS=1: two spinning OpenMP threads on
# oversubscribed cores were 3-10x slower here.
# usage: [STEPS=N] [VTOK_STEPS=N] tools/train-world.sh [path/to/ds4] [out dir] [work dir]
set -euo pipefail
DS4=${1:-build/ds4}
OUT=${2:-models/default}
WORK=${3:-/tmp/ds4-world-work}
TEXT=${DS4_TEXT:-../shared/data/brown}
VTOK_STEPS=${VTOK_STEPS:-5000}
STEPS=${STEPS:-6000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$WORK"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "tokenizer"
[ -f "$WORK/tokenizer.json" ] || "$DS4" tokenizer train --in "$TEXT/train.txt" --vocab 4096 --out "$WORK/tokenizer.json"
[ -f "$WORK/text.bin" ] || "$DS4" tokenize --tokenizer "$WORK/tokenizer.json" --in "$TEXT/train.txt" --out "$WORK/text.bin"
[ -f "$WORK/text-val.bin" ] || "$DS4" tokenize --tokenizer "$WORK/tokenizer.json" --in "$TEXT/val.txt" --out "$WORK/text-val.bin"

stamp "video tokenizer ($VTOK_STEPS steps)"
if [ ! -f "$WORK/vtok/video.safetensors" ]; then
  [ -f "$WORK/vdata/train.jsonl" ] || "$DS4" world gen --split train --n 4096 --seconds 2 --out "$WORK/vdata"
  [ -f "$WORK/vdata/val.jsonl" ] || "$DS4" world gen --split val --n 16 --seconds 2 --out "$WORK/vdata"
  "$DS4" vtok train --data "$WORK/vdata" --out "$WORK/vtok" --steps "$VTOK_STEPS" --head 512 \
    --eval-every 500 --quiet
fi

stamp "backbone clips"
[ -f "$WORK/data/train.jsonl" ] || "$DS4" world gen --split train --n 2048 --seconds 4 --out "$WORK/data"
[ -f "$WORK/data/val.jsonl" ] || "$DS4" world gen --split val --n 16 --seconds 4 --out "$WORK/data"

stamp "backbone ($STEPS steps)"
"$DS4" video train --config configs/world.json --tokenizer "$WORK/tokenizer.json" --vtok "$WORK/vtok" \
  --data "$WORK/data" --text "$WORK/text.bin" --text-val "$WORK/text-val.bin" --out "$WORK/model" \
  --steps "$STEPS" --batch 4 --seq 600 --window 8 --caption-max 64 --text-frac 0.2 --lr 3e-3 --warmup 20 \
  --eval-every 200 --save-every 50 --seed 1337 --quiet $( [ -f "$WORK/model/trainer_state.json" ] && echo --resume )

stamp "export (F16) to $OUT"
"$DS4" video export --model "$WORK/model" --out "$OUT"
cp "$WORK/model/train_log.jsonl" "$OUT/train_log.jsonl"
cp "$WORK/vtok/train_log.jsonl" "$OUT/vtok_train_log.jsonl"
du -ch "$OUT"/* | tail -1
stamp "done"
