#!/usr/bin/env bash
# make demo: runs the shipped default model (models/default) end to end:
# streams text from a prompt, shows what the model costs per token, then (world
# model) writes a clip from a prompt and a simulated continuation of a test clip,
# prints where they are, and prints the physics metrics against the simulator.
set -euo pipefail
DS4=${1:-build/ds4}
MODEL=${DS4_MODEL:-models/default}
PROMPT=${DS4_PROMPT:-"The jury said that the city"}
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "demo: $MODEL/model.safetensors is missing (reproduce it with tools/train-world.sh, or tools/train-default.sh for a text-only model)" >&2
  exit 1
fi
echo "== ds4 demo: $MODEL"
"$DS4" info --model "$MODEL" || true
echo
echo "== text: prompt \"$PROMPT\""
"$DS4" generate --model "$MODEL" --prompt "$PROMPT" -n 80 --temp 0.8 --top-p 0.95 --seed 7
echo
if [ -f "$MODEL/video.safetensors" ]; then
  OUT=${DS4_DEMO_OUT:-demo-out}
  mkdir -p "$OUT"
  VPROMPT=${DS4_VIDEO_PROMPT:-"a small red ball drops from the upper left and bounces three times"}
  echo "== video: text to video, prompt \"$VPROMPT\" (10 s at 24 fps)"
  "$DS4" video --model "$MODEL" --prompt "$VPROMPT" --seconds 10 --fps 24 --seed 7 --out "$OUT/text-to-video.gif"
  echo
  echo "== video: simulation by continuation (a held-out test clip, 12 frames given, 2 s simulated)"
  "$DS4" world render --seed 2000003 --seconds 3 --scale 4 --out "$OUT/test-clip.gif" --json "$OUT/test-clip.json" >/dev/null
  "$DS4" simulate --model "$MODEL" --clip "$OUT/test-clip.gif" --given 12 --seconds 2 --seed 7 \
    --truth "$OUT/test-clip.json" --out "$OUT/simulated.gif"
  echo
  echo "== physics metrics: 8 held-out test clips vs the simulator, baselines in the same run"
  "$DS4" bench world --model "$MODEL" --clips 8 --t2v 8 --json "$OUT/bench-world.json" 2>/dev/null
  echo
  echo "clips: $OUT/text-to-video.gif (+ .json trajectories), $OUT/test-clip.gif (input),"
  echo "       $OUT/simulated.gif (12 given + 48 simulated frames, + .json), metrics: $OUT/bench-world.json"
else
  echo "== video: $MODEL has no video tokenizer (video.safetensors): a text-only model."
fi
