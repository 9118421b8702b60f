#!/bin/bash
# test_lora_cli.sh — LoRA from the CLI on a tiny MoE model made here: ds4 finetune (val loss on
# the new text falls, PEFT files), generate/eval/logits --lora equal to the merged model
# (ds4 lora merge), ds4 lora info, an adapter on a Q8_0 base, and clear errors.
# Usage: bash tests/test_lora_cli.sh path/to/ds4
DS4=${1:?usage: $0 path/to/ds4}
W=$(mktemp -d "${TMPDIR:-/tmp}/ds4_lora_cli.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() { echo "test_lora_cli.sh: FAIL: $*" >&2; exit 1; }
export OMP_NUM_THREADS=1

for i in $(seq 1 40); do
    echo "the cat sat on the mat number $i. a dog ran to the park and the bird sang in the tree."
done > "$W/base.txt"
for i in $(seq 1 40); do
    echo "seven green frogs jumped over the wall at noon, then rested by the cold river $i."
done > "$W/new.txt"
head -n 30 "$W/new.txt" > "$W/new_train.txt"; tail -n 10 "$W/new.txt" > "$W/new_val.txt"
cat > "$W/config.json" <<'JSON'
{"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
 "max_position_embeddings": 64, "first_k_dense_replace": 1, "n_routed_experts": 4,
 "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1}
JSON
cat "$W/base.txt" "$W/new.txt" > "$W/all.txt"
"$DS4" tokenizer train --in "$W/all.txt" --vocab 300 --out "$W/tok.json" --quiet >/dev/null || fail "tokenizer train"
"$DS4" tokenize --tokenizer "$W/tok.json" --in "$W/base.txt" --out "$W/base.bin" >/dev/null || fail "tokenize"
"$DS4" train --config "$W/config.json" --tokenizer "$W/tok.json" --data "$W/base.bin" --out "$W/m" \
    --steps 40 --batch 4 --seq 32 --lr 3e-3 --quiet >"$W/log" 2>&1 || fail "train base: $(cat "$W/log")"

"$DS4" finetune --help | grep -q "PEFT" || fail "finetune --help does not describe the output"
"$DS4" lora --help | grep -q "merge" || fail "lora --help lacks merge"
"$DS4" finetune --model "$W/m" --data "$W/new_train.txt" --out "$W/x" >/dev/null 2>&1
[ $? -eq 2 ] || fail "finetune without --lora-rank did not exit 2"

"$DS4" finetune --model "$W/m" --data "$W/new_train.txt" --val "$W/new_val.txt" --lora-rank 4 \
    --out "$W/ad" --steps 30 --batch 4 --seq 32 --lr 1e-2 --eval-every 30 --eval-batches 2 --quiet \
    >"$W/log" 2>&1 || fail "finetune: $(cat "$W/log")"
grep -q "adapter saved" "$W/log" || fail "finetune printed no final line: $(cat "$W/log")"
for f in adapter_model.safetensors adapter_config.json finetune_log.jsonl; do
    [ -s "$W/ad/$f" ] || fail "finetune wrote no $f"
done
grep -q '"peft_type":[[:space:]]*"LORA"' "$W/ad/adapter_config.json" || fail "adapter_config.json lacks peft_type LORA"
grep -q 'base_model.model.model.layers.1.mlp.experts.3.down_proj.lora_B.weight' "$W/ad/adapter_model.safetensors" \
    || fail "no expert adapter under its PEFT name"
[ "$(grep -c '"loss"' "$W/ad/finetune_log.jsonl")" = 30 ] || fail "log does not have 30 step lines"
v0=$(head -n 1 "$W/ad/finetune_log.jsonl" | grep -o '"val_loss":[0-9.]*' | cut -d: -f2)
v1=$(tail -n 1 "$W/ad/finetune_log.jsonl" | grep -o '"val_loss":[0-9.]*' | cut -d: -f2)
[ -n "$v0" ] && [ -n "$v1" ] || fail "no val_loss before/after in the log"
awk -v a="$v0" -v b="$v1" 'BEGIN { exit !(b < 0.8 * a) }' || fail "val loss on the new text $v0 -> $v1: not down by 20%"
echo "test_lora_cli.sh: val loss on the new text $v0 -> $v1" >&2

"$DS4" lora info --lora "$W/ad" --model "$W/m" >"$W/info" 2>&1 || fail "lora info: $(cat "$W/info")"
grep -q "r 4, alpha 8" "$W/info" || fail "lora info: $(cat "$W/info")"
"$DS4" lora merge --model "$W/m" --lora "$W/ad" --out "$W/merged" >"$W/log" 2>&1 || fail "merge: $(cat "$W/log")"

# PEFT's convention, checked by an independent reader (Python stdlib): merged W = W + alpha/r * B @ A
if command -v python3 >/dev/null; then
    python3 - "$W/m/model.safetensors" "$W/ad" "$W/merged/model.safetensors" <<'PY' || fail "merged weights are not W + alpha/r * B A"
import json, struct, sys
def st(path):
    b = open(path, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n])
    def get(name):
        t = h[name]; assert t['dtype'] == 'F32', t['dtype']; s, e = t['data_offsets']
        v = struct.unpack('<%df' % ((e - s) // 4), b[8 + n + s:8 + n + e]); r, c = t['shape']
        return [v[i * c:(i + 1) * c] for i in range(r)]
    return get
base, ad, mg = st(sys.argv[1]), st(sys.argv[2] + '/adapter_model.safetensors'), st(sys.argv[3])
cfg = json.load(open(sys.argv[2] + '/adapter_config.json'))
s = cfg['lora_alpha'] / cfg['r']
for mod in ['model.layers.0.self_attn.q_proj', 'model.layers.1.mlp.experts.2.down_proj']:
    W, M = base(mod + '.weight'), mg(mod + '.weight')
    A, B = ad('base_model.model.' + mod + '.lora_A.weight'), ad('base_model.model.' + mod + '.lora_B.weight')
    worst = max(abs(W[o][i] + s * sum(B[o][k] * A[k][i] for k in range(len(A))) - M[o][i])
                for o in range(len(W)) for i in range(len(W[0])))
    delta = max(abs(M[o][i] - W[o][i]) for o in range(len(W)) for i in range(len(W[0])))
    assert worst < 1e-6 and delta > 1e-4, (mod, worst, delta)
PY
fi

gen() { "$DS4" generate --model "$1" "${@:2}" --prompt "seven green" -n 16 --temp 0 2>"$W/err"; }
base=$(gen "$W/m") || fail "generate base: $(cat "$W/err")"
ad=$(gen "$W/m" --lora "$W/ad") || fail "generate --lora: $(cat "$W/err")"
mg=$(gen "$W/merged") || fail "generate merged: $(cat "$W/err")"
[ "$ad" = "$mg" ] || fail "generate --lora '$ad' differs from the merged model '$mg'"
[ "$ad" != "$base" ] || fail "the adapter does not change generation ('$ad')"

e1=$("$DS4" eval --model "$W/m" --lora "$W/ad" --data "$W/new_val.txt" --ctx 32 2>&1 | head -n 1) || fail "eval --lora: $e1"
e2=$("$DS4" eval --model "$W/merged" --data "$W/new_val.txt" --ctx 32 2>&1 | head -n 1) || fail "eval merged: $e2"
[ "$(echo "$e1" | awk '{print $2}')" = "$(echo "$e2" | awk '{print $2}')" ] || fail "eval --lora '$e1' vs merged '$e2'"

ids="1,50,100,17,200,299,12,77"
"$DS4" logits --model "$W/m" --lora "$W/ad" --tokens "$ids" --out "$W/la" 2>"$W/err" || fail "logits --lora: $(cat "$W/err")"
"$DS4" logits --model "$W/merged" --tokens "$ids" --out "$W/lm" 2>"$W/err" || fail "logits merged: $(cat "$W/err")"
od -An -v -f -w4 "$W/la" > "$W/a"; od -An -v -f -w4 "$W/lm" > "$W/b"
paste "$W/a" "$W/b" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d; a = $2 < 0 ? -$2 : $2; if (a > s) s = a }
    END { exit !(NR > 0 && m <= 1e-5 * s) }' || fail "logits --lora differ from the merged model by more than 1e-5 relative"

# a quantized base keeps its blocks; the adapter runs beside them, and trains on it
"$DS4" quantize --model "$W/m" --type q8_0 --out "$W/q8" >/dev/null 2>&1 || fail "quantize"
q=$(gen "$W/q8" --lora "$W/ad") || fail "generate q8_0 --lora: $(cat "$W/err")"
[ -n "$q" ] || fail "empty generation on q8_0 --lora"
"$DS4" finetune --model "$W/q8" --data "$W/new_train.txt" --lora-rank 2 --targets q,v --out "$W/adq" \
    --steps 2 --batch 2 --seq 16 --quiet >"$W/log" 2>&1 || fail "finetune on q8_0: $(cat "$W/log")"
grep -q "dequantized to fp32" "$W/log" || fail "finetune on q8_0 does not say the base is dequantized"
grep -q '"target_modules":[[:space:]]*\["q_proj", "v_proj"\]' "$W/adq/adapter_config.json" || fail "targets q,v not recorded"
"$DS4" lora merge --model "$W/q8" --lora "$W/adq" --out "$W/mq" >"$W/log" 2>&1 || fail "merge on q8_0: $(cat "$W/log")"
grep -q "fp32" "$W/log" || fail "merge on q8_0 does not say the result is fp32"

# a GGUF base: fine-tune on it and attach the adapter to it
"$DS4" export-gguf --model "$W/m" --out "$W/m.gguf" >/dev/null 2>&1 || fail "export-gguf"
"$DS4" finetune --model "$W/m.gguf" --data "$W/new_train.txt" --lora-rank 2 --out "$W/adg" \
    --steps 2 --batch 2 --seq 16 --quiet >"$W/log" 2>&1 || fail "finetune on GGUF: $(cat "$W/log")"
g=$(gen "$W/m.gguf" --lora "$W/ad") || fail "generate GGUF --lora: $(cat "$W/err")"
[ "$g" = "$ad" ] || fail "generate GGUF --lora '$g' differs from the directory with --lora '$ad'"

# --stop-after + --resume continue bit-for-bit: 6 steps at once == 3 + 3 (same adapter bytes)
ft6() { "$DS4" finetune --model "$W/m" --data "$W/new_train.txt" --val "$W/new_val.txt" --lora-rank 2 \
    --steps 6 --batch 2 --seq 16 --eval-every 2 --eval-batches 1 --quiet "$@"; }
ft6 --out "$W/r1" >"$W/log" 2>&1 || fail "finetune 6 steps: $(cat "$W/log")"
ft6 --out "$W/r2" --stop-after 3 >"$W/log" 2>&1 || fail "finetune --stop-after: $(cat "$W/log")"
grep -q "continue with --resume" "$W/log" || fail "--stop-after printed no hint: $(cat "$W/log")"
cmp -s "$W/r1/adapter_model.safetensors" "$W/r2/adapter_model.safetensors" && fail "3 steps equal 6 steps"
ft6 --out "$W/r2" --resume --lr 5e-3 >"$W/log" 2>&1 && fail "resume with another --lr accepted"
grep -q "lr" "$W/log" || fail "resume with another --lr: $(cat "$W/log")"
ft6 --out "$W/r2" --resume >"$W/log" 2>&1 || fail "finetune --resume: $(cat "$W/log")"
grep -q "resuming at step 3 of 6" "$W/log" || fail "resume did not start at step 3: $(cat "$W/log")"
cmp -s "$W/r1/adapter_model.safetensors" "$W/r2/adapter_model.safetensors" \
    || fail "3 + 3 resumed steps differ from 6 steps"
[ "$(grep -c '"loss"' "$W/r2/finetune_log.jsonl")" = 6 ] || fail "resumed log does not have 6 step lines"
"$DS4" finetune --model "$W/m" --data "$W/new_train.txt" --out "$W/nope" --resume --seq 16 >/dev/null 2>"$W/err" \
    && fail "resume without a checkpoint accepted"
grep -q "finetune_state.json" "$W/err" || fail "resume without a checkpoint: $(cat "$W/err")"

# errors name the problem
"$DS4" generate --model "$W/m" --lora "$W/nope" --prompt x -n 1 >/dev/null 2>"$W/err" && fail "missing adapter accepted"
grep -q "adapter_config.json" "$W/err" || fail "missing adapter: $(cat "$W/err")"
cp -r "$W/ad" "$W/bad"; echo '{"peft_type": "LORA", "r": 4,' > "$W/bad/adapter_config.json"
"$DS4" eval --model "$W/m" --lora "$W/bad" --data "$W/new_val.txt" >/dev/null 2>"$W/err" && fail "bad JSON accepted"
grep -q "not a valid JSON" "$W/err" || fail "bad JSON: $(cat "$W/err")"
"$DS4" finetune --model "$W/m" --data "$W/new_train.txt" --lora-rank 2 --targets q,router --out "$W/x" \
    >/dev/null 2>"$W/err" && fail "unknown target accepted"
grep -q "router" "$W/err" || fail "unknown target: $(cat "$W/err")"
echo "test_lora_cli.sh: ok"
