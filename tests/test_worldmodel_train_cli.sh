#!/bin/bash
# test_worldmodel_train_cli.sh — `ds4 video train` end to end on tiny generated
# data (32x32 clips, a BPE tokenizer learned from their captions, a few-step video
# tokenizer): a run stopped with --stop-after and resumed writes the same weights
# and optimizer state as the uninterrupted run; a checkpoint whose run state lags
# the optimizer (an interrupted save) is refused; the trained model generates.
# usage: bash test_worldmodel_train_cli.sh path/to/ds4   (exit 77 = skipped)
set -u
DS4=${1:-../build/ds4}
[ -x "$DS4" ] || { echo "skip: $DS4 not built"; exit 77; }
T=$(mktemp -d /tmp/ds4_test_wm_train_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
export OMP_NUM_THREADS=1

"$DS4" world gen --n 6 --seconds 1 --size 32 --out "$T/d" > /dev/null 2>&1 || fail "world gen"
"$DS4" world gen --n 2 --seconds 1 --size 32 --split val --out "$T/d" > /dev/null 2>&1 || fail "world gen val"
# text for the BPE: the captions themselves, repeated
for i in 1 2 3 4; do grep -o '"caption":"[^"]*"' "$T/d/train.jsonl" | cut -d'"' -f4; done > "$T/text.txt"
"$DS4" tokenizer train --in "$T/text.txt" --vocab 300 --out "$T/tok.json" --quiet > /dev/null 2>&1 || fail "tokenizer"
"$DS4" vtok train --data "$T/d" --out "$T/vt" --steps 2 --hidden 8 --ffn 8 --head 8 \
    --enc-layers 1 --dec-layers 1 --eval-clips 1 --quiet > "$T/vt.txt" 2>&1 || { cat "$T/vt.txt"; fail "vtok train"; }
cat > "$T/cfg.json" <<'EOF'
{"model_type": "ds4", "vocab_size": 1300, "hidden_size": 32, "intermediate_size": 64,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
 "max_position_embeddings": 160, "tie_word_embeddings": true,
 "video": {"width": 32, "height": 32, "fps": 24, "patch": 8, "tubelet": 4, "levels": [8, 5, 5, 5],
           "code_offset": 300, "hidden": 8}}
EOF
train() {  # out dir, extra flags
    "$DS4" video train --config "$T/cfg.json" --tokenizer "$T/tok.json" --vtok "$T/vt" --data "$T/d" \
        --out "$1" --steps 4 --batch 2 --seq 128 --window 3 --caption-max 24 --eval-every 2 --save-every 2 \
        --quiet "${@:2}"
}
train "$T/a" > "$T/a.txt" 2>&1 || { cat "$T/a.txt"; fail "train 4 steps"; }
[ "$(wc -l < "$T/a/train_log.jsonl")" -eq 4 ] || fail "train log lines"
grep -q '"val_code_nll"' "$T/a/train_log.jsonl" || fail "no validation in the log"

train "$T/b" --stop-after 2 > "$T/b.txt" 2>&1 || { cat "$T/b.txt"; fail "train --stop-after 2"; }
grep -q "stopped with a checkpoint at step 2 of 4" "$T/b.txt" || { cat "$T/b.txt"; fail "stop message"; }
cp -r "$T/b" "$T/c"
train "$T/b" --resume > "$T/b2.txt" 2>&1 || { cat "$T/b2.txt"; fail "resume"; }
cmp -s "$T/a/model.safetensors" "$T/b/model.safetensors" || fail "resumed weights differ from the uninterrupted run"
cmp -s "$T/a/optimizer.safetensors" "$T/b/optimizer.safetensors" || fail "resumed optimizer state differs"
[ "$(wc -l < "$T/b/train_log.jsonl")" -eq 4 ] || fail "resumed log lines"

# an interrupted save: the run state says step 1, the optimizer was written at step 2
sed -i 's/"step":[[:space:]]*2/"step": 1/' "$T/c/trainer_state.json"
grep -q '"step": 1' "$T/c/trainer_state.json" || fail "test setup: step not rewritten"
train "$T/c" --resume > "$T/c.txt" 2>&1 && fail "a lagging run state was resumed"
grep -q "optimizer.safetensors" "$T/c.txt" || { cat "$T/c.txt"; fail "error does not name the optimizer file"; }
train "$T/none" --resume > "$T/n.txt" 2>&1 && fail "resume from nothing accepted"
grep -q "resuming from $T/none: .*config.json" "$T/n.txt" || { cat "$T/n.txt"; fail "error does not name the missing file"; }

# captions are cut at --caption-max tokens, and generation reads the same limit
grep -q '"caption_max": 24' "$T/a/worldmodel.json" || fail "caption_max not recorded"
train "$T/e" --caption-max 9 --stop-after 1 > "$T/e.txt" 2>&1 || { cat "$T/e.txt"; fail "train --caption-max 9"; }
grep -q '"caption_max": 9' "$T/e/worldmodel.json" || fail "--caption-max not recorded"

# the trained model opens and generates (guided too)
"$DS4" video --model "$T/a" --prompt "a small red ball drops" --seconds 0.5 --cfg 2 --out "$T/v.gif" \
    > "$T/v.txt" 2>&1 || { cat "$T/v.txt"; fail "video from the trained model"; }
[ -s "$T/v.gif" ] || fail "no GIF"
echo "ok"
