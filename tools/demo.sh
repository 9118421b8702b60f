#!/usr/bin/env bash
# make demo: runs the shipped default model (models/default) end to end:
# streams text from a prompt, then shows what the model costs per token.
set -euo pipefail
DS4=${1:-build/ds4}
MODEL=${DS4_MODEL:-models/default}
PROMPT=${DS4_PROMPT:-"The jury said that the city"}
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "demo: $MODEL/model.safetensors is missing (reproduce it with tools/train-default.sh)" >&2
  exit 1
fi
echo "== ds4 demo: $MODEL"
"$DS4" info --model "$MODEL" || true
echo
echo "== text: prompt \"$PROMPT\""
"$DS4" generate --model "$MODEL" --prompt "$PROMPT" -n 80 --temp 0.8 --top-p 0.95 --seed 7
echo
if "$DS4" video --help >/dev/null 2>&1 && [ -f "$MODEL/video.safetensors" ]; then
  echo "== video"
  "$DS4" video --model "$MODEL" --prompt "a red ball drops and bounces" --out demo.gif
else
  echo "== video: this default model is text-only; text-to-video arrives with the world model."
fi
