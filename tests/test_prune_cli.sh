#!/bin/bash
# test_prune_cli.sh — token pruning and sparse attention from the CLI: `ds4 train --indexer-warmup N`
# (first N steps logged as warm-up), `ds4 eval` cost and causal-rule agreement lines, `ds4 generate`.
# Usage: bash tests/test_prune_cli.sh path/to/ds4
DS4=${1:?usage: $0 path/to/ds4}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4_prune_cli.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "test_prune_cli.sh: FAIL: $*" >&2; exit 1; }

for i in $(seq 1 60); do
    echo "the cat sat on the mat number $i. a dog ran to the park and the bird sang in the tree."
done > "$WORK/corpus.txt"
cat > "$WORK/config.json" <<'JSON'
{"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
 "prune_layers": [1], "prune_ratio": [0.3], "index_topk": 8, "index_n_heads": 2, "index_head_dim": 8}
JSON
"$DS4" tokenizer train --in "$WORK/corpus.txt" --vocab 300 --out "$WORK/tok.json" --quiet >/dev/null || fail "tokenizer train"
"$DS4" tokenize --tokenizer "$WORK/tok.json" --in "$WORK/corpus.txt" --out "$WORK/data.bin" >/dev/null || fail "tokenize"

"$DS4" train --help | grep -q -- "--indexer-warmup" || fail "--indexer-warmup missing from ds4 train --help"
OMP_NUM_THREADS=1 "$DS4" train --config "$WORK/config.json" --tokenizer "$WORK/tok.json" --data "$WORK/data.bin" \
    --out "$WORK/m" --steps 3 --batch 2 --seq 32 --indexer-warmup 2 --quiet >"$WORK/log" 2>&1 || fail "train: $(cat "$WORK/log")"
w=$(grep -o '"indexer_warmup":[01]' "$WORK/m/train_log.jsonl" | cut -d: -f2 | tr -d '\n')
[ "$w" = "110" ] || fail "indexer warm-up flags per step '$w', expected 110"
"$DS4" train --config "$WORK/config.json" --data "$WORK/data.bin" --out "$WORK/x" --indexer-warmup -1 \
    >/dev/null 2>&1 && fail "negative --indexer-warmup accepted"

OMP_NUM_THREADS=1 "$DS4" eval --model "$WORK/m" --data "$WORK/corpus.txt" --ctx 64 >"$WORK/ev" 2>&1 || fail "eval: $(cat "$WORK/ev")"
grep -q '^cost per token at context 64' "$WORK/ev" || fail "eval prints no cost table: $(cat "$WORK/ev")"
grep -q 'causal keep decision vs top-k membership' "$WORK/ev" || fail "eval prints no agreement: $(cat "$WORK/ev")"
grep -q '"prune_agreement": [0-9.]*,' "$WORK/ev" || fail "eval JSON has no prune_agreement number"
grep -q '"flops_per_token": [0-9.]*,' "$WORK/ev" || fail "eval JSON has no flops_per_token"
[ "$(grep -c '"kv_bytes": ' "$WORK/ev")" = 1 ] || fail "eval JSON: one cost line with per-layer kv_bytes expected"

OMP_NUM_THREADS=1 "$DS4" generate --model "$WORK/m" --prompt "the cat" -n 8 --temp 0 \
    >"$WORK/gen" 2>&1 || fail "generate: $(cat "$WORK/gen")"
exit 0
