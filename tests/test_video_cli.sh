#!/bin/bash
# test_video_cli.sh — `ds4 vtok` end to end on a tiny generated dataset: train
# a few steps, encode a dataset clip, decode to GIF; the same clip as a GIF
# (ds4 world show, --scale 4) encodes to the identical codes file; eval's JSON
# line; the error paths (missing options, unknown option, corrupt codes file).
# usage: bash test_video_cli.sh path/to/ds4   (exit 77 = skipped)
set -u
DS4=${1:-../build/ds4}
[ -x "$DS4" ] || { echo "skip: $DS4 not built"; exit 77; }
T=$(mktemp -d /tmp/ds4_test_video_cli_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

for sub in "" train encode decode eval; do
    "$DS4" vtok $sub --help > "$T/help.txt" || fail "vtok $sub --help"
    grep -q "usage: ds4 vtok" "$T/help.txt" || fail "vtok $sub --help text"
done

"$DS4" world gen --n 4 --seconds 0.667 --size 32 --out "$T/d" > /dev/null 2>&1 || fail "world gen"
"$DS4" world gen --n 1 --seconds 0.667 --size 32 --split val --out "$T/d" > /dev/null 2>&1 || fail "world gen val"

"$DS4" vtok train --data "$T/d" --out "$T/m" --steps 4 --hidden 8 --ffn 8 --head 8 \
    --enc-layers 1 --dec-layers 1 --eval-clips 1 --quiet > "$T/train.txt" 2>&1 || { cat "$T/train.txt"; fail "train"; }
[ -f "$T/m/video.safetensors" ] && [ -f "$T/m/video_config.json" ] || fail "train outputs"
grep -q '"levels"' "$T/m/video_config.json" || fail "config levels"
[ "$(wc -l < "$T/m/train_log.jsonl")" -eq 4 ] || fail "train log lines"

"$DS4" vtok encode --model "$T/m" --shard "$T/d/val-00000.ds4w" --clip 0 --out "$T/c.bin" > /dev/null || fail "encode shard"
# 16 frames of 32x32 -> 4 x 4 x 4 codes: 64 + 4 * 64 bytes
[ "$(stat -c %s "$T/c.bin")" -eq 320 ] || fail "codes file size"
"$DS4" vtok decode --model "$T/m" --codes "$T/c.bin" --out "$T/r.gif" --scale 4 > /dev/null || fail "decode"
[ -s "$T/r.gif" ] || fail "decoded GIF"
"$DS4" world show --shard "$T/d/val-00000.ds4w" --clip 0 --out "$T/o.gif" --scale 4 > /dev/null 2>&1 || fail "world show"
"$DS4" vtok encode --model "$T/m" --clip "$T/o.gif" --out "$T/c2.bin" > /dev/null || fail "encode gif"
cmp -s "$T/c.bin" "$T/c2.bin" || fail "GIF and shard clip give different codes"
"$DS4" vtok encode --model "$T/m" --clip "$T/r.gif" --out "$T/c3.bin" > /dev/null || fail "encode decoded gif"
"$DS4" vtok eval --model "$T/m" --data "$T/d" --split val --json "$T/e.json" > "$T/eval.txt" || fail "eval"
grep -q '"psnr_db":' "$T/eval.txt" || fail "eval JSON line"
grep -q '"centroid_err_px":' "$T/e.json" || fail "eval --json file"
"$DS4" vtok eval --model "$T/m" --data "$T/d" --split train --per-clip --water-bound > "$T/eval2.txt" || fail "eval --water-bound"
grep -q "PSNR balls-only scenes" "$T/eval2.txt" && grep -q "PSNR water scenes" "$T/eval2.txt" || fail "eval scene split"
grep -q "water-blur bound" "$T/eval2.txt" || fail "eval water-blur bound line"
[ "$(grep -c "^  clip " "$T/eval2.txt")" -eq 4 ] || fail "eval --per-clip lines"
grep -q '"psnr_balls_only_db":' "$T/eval2.txt" && grep -q '"water_bound_db":' "$T/eval2.txt" || fail "eval split JSON keys"

# errors
"$DS4" vtok encode --shard "$T/d/val-00000.ds4w" --clip 0 --out "$T/x.bin" 2> /dev/null; [ $? -eq 2 ] || fail "missing --model exit 2"
"$DS4" vtok train --data "$T/d" --out "$T/m2" --bogus 2> /dev/null; [ $? -eq 2 ] || fail "unknown option exit 2"
"$DS4" vtok bogus 2> /dev/null; [ $? -eq 2 ] || fail "unknown subcommand exit 2"
printf 'XXXX' | dd of="$T/c.bin" bs=1 seek=100 conv=notrunc 2> /dev/null
"$DS4" vtok decode --model "$T/m" --codes "$T/c.bin" --out "$T/y.gif" 2> "$T/err.txt"; [ $? -eq 1 ] || fail "corrupt codes exit 1"
grep -q "CRC" "$T/err.txt" || fail "corrupt codes message"
"$DS4" vtok eval --model "$T/nomodel" --data "$T/d" 2> "$T/err.txt"; [ $? -eq 1 ] || fail "missing model exit 1"
grep -q "video_config.json" "$T/err.txt" || fail "missing model message"
echo "ok"
