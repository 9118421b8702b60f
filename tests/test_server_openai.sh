#!/usr/bin/env bash
# test_server_openai.sh — integration tests of `ds4 serve` with the official
# OpenAI Node client (npm package `openai`, tests/js/server) and raw HTTP:
# completions, chat, streaming, errors, concurrency, disconnects, 429,
# SIGTERM. Builds a tiny model first (tokenizer train, tokenize, 2 training
# steps) in a temporary folder. Usage:
#   bash tests/test_server_openai.sh path/to/ds4
# Exit 0: pass; 1: a failure; 77: skipped (no Node, or the package cannot
# be installed).
set -u
DS4=${1:?usage: test_server_openai.sh path/to/ds4}
case "$DS4" in /*) ;; *) DS4="$PWD/$DS4" ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
JS="$HERE/js/server"

if [ ! -x "$DS4" ]; then
    echo "test_server_openai: $DS4 is not an executable ds4 binary" >&2
    exit 1
fi
if ! command -v node >/dev/null 2>&1; then
    echo "test_server_openai: SKIP: node is not installed"
    exit 77
fi
if [ ! -d "$JS/node_modules/openai" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "test_server_openai: SKIP: npm is not installed and tests/js/server/node_modules is missing"
        exit 77
    fi
    echo "test_server_openai: installing the openai package (npm ci in tests/js/server)"
    if ! (cd "$JS" && npm ci --no-audit --no-fund >/dev/null 2>&1); then
        echo "test_server_openai: SKIP: 'npm ci' in tests/js/server failed (no access to the npm registry?)"
        exit 77
    fi
fi
if ! (cd "$JS" && node -e "require('openai')" >/dev/null 2>&1); then
    echo "test_server_openai: SKIP: the openai package does not load with $(node --version)"
    exit 77
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4_server_test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A tiny model: byte-level BPE on a generated corpus, 2 training steps.
for i in $(seq 1 80); do
    echo "the cat sat on the mat number $i. a dog ran to the park and the bird sang."
    printf 'one two three four five six seven eight nine ten. caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9.\n'
done > "$WORK/corpus.txt"
cat > "$WORK/config.json" <<'EOF'
{"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
 "max_position_embeddings": 256}
EOF
set -e
"$DS4" tokenizer train --in "$WORK/corpus.txt" --vocab 300 --out "$WORK/tokenizer.json" --quiet >/dev/null
"$DS4" tokenize --tokenizer "$WORK/tokenizer.json" --in "$WORK/corpus.txt" --out "$WORK/data.bin" >/dev/null
OMP_NUM_THREADS=1 "$DS4" train --config "$WORK/config.json" --tokenizer "$WORK/tokenizer.json" \
    --data "$WORK/data.bin" --out "$WORK/tiny" --steps 2 --batch 2 --seq 32 --quiet >/dev/null 2>&1
set +e

cd "$JS" && DS4="$DS4" DS4_MODEL="$WORK/tiny" DS4_WORK="$WORK" OMP_NUM_THREADS=1 \
    timeout 300 node --test --test-concurrency=1 server_test.js
