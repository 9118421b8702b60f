#!/usr/bin/env bash
# test_default_model.sh — the shipped models/default loads and runs as `make demo`
# uses it: text generation, and (world model) text to video through the video
# tokenizer, writing a GIF and trajectories. Usage: bash tests/test_default_model.sh path/to/ds4
set -u
DS4=${1:?usage: test_default_model.sh path/to/ds4}
case "$DS4" in /*) ;; *) DS4="$PWD/$DS4" ;; esac
MODEL="$(cd "$(dirname "$0")/.." && pwd)/models/default"
T=$(mktemp -d /tmp/ds4_test_default_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "test_default_model.sh: FAIL: $*" >&2; exit 1; }

"$DS4" info --model "$MODEL" > "$T/info" 2>&1 || fail "info: $(cat "$T/info")"
out=$("$DS4" generate --model "$MODEL" --prompt "The jury said" -n 8 --temp 0 2>"$T/err") || fail "generate: $(cat "$T/err")"
[ -n "$out" ] || fail "generate produced no text"
if [ -f "$MODEL/video.safetensors" ]; then
    "$DS4" video --model "$MODEL" --prompt "a small red ball drops" --seconds 0.5 --fps 24 --seed 1 \
        --out "$T/v.gif" > "$T/log" 2>&1 || fail "video: $(cat "$T/log")"
    [ -s "$T/v.gif" ] || fail "video wrote no GIF"
    [ -s "$T/v.json" ] || fail "video wrote no trajectories"
    head -c 6 "$T/v.gif" | grep -q "GIF89a\|GIF87a" || fail "not a GIF"
    "$DS4" video --model "$MODEL" --prompt "a small red ball drops" --seconds 0.5 --seed 1 --cfg 3 \
        --out "$T/g.gif" > "$T/log" 2>&1 || fail "video --cfg 3: $(cat "$T/log")"
    [ -s "$T/g.gif" ] || fail "video --cfg 3 wrote no GIF"
    "$DS4" video --model "$MODEL" --prompt "a ball" --seconds 0.5 --cfg -1 --out "$T/x.gif" > "$T/log" 2>&1 \
        && fail "video --cfg -1 accepted"
    grep -q "guidance" "$T/log" || fail "video --cfg -1: no error naming the guidance scale: $(cat "$T/log")"
fi
echo "test_default_model.sh: ok"
