#!/usr/bin/env bash
# test_tokenizer_hf.sh — trains a tokenizer with ds4 and checks that the
# Hugging Face `tokenizers` library (npm package, tests/js) loads its
# tokenizer.json and gives the same ids as `ds4 tokenize`. Usage:
#   bash tests/test_tokenizer_hf.sh path/to/ds4
# Exit 0: same ids; 1: a mismatch or error; 77: skipped (no Node or no package).
set -u
DS4=${1:?usage: test_tokenizer_hf.sh path/to/ds4}
case "$DS4" in /*) ;; *) DS4="$PWD/$DS4" ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
JS="$HERE/js"

if [ ! -x "$DS4" ]; then
    echo "test_tokenizer_hf: $DS4 is not an executable ds4 binary" >&2
    exit 1
fi
if ! command -v node >/dev/null 2>&1; then
    echo "test_tokenizer_hf: SKIP: node is not installed (needed for the Hugging Face tokenizers package)"
    exit 77
fi
if [ ! -d "$JS/node_modules/tokenizers" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "test_tokenizer_hf: SKIP: npm is not installed and tests/js/node_modules is missing"
        exit 77
    fi
    echo "test_tokenizer_hf: installing the tokenizers package (npm ci in tests/js)"
    if ! (cd "$JS" && npm ci --no-audit --no-fund >/dev/null 2>&1); then
        echo "test_tokenizer_hf: SKIP: 'npm ci' in tests/js failed (no access to the npm registry?)"
        exit 77
    fi
fi
if ! (cd "$JS" && node -e "require('tokenizers').Tokenizer" >/dev/null 2>&1); then
    echo "test_tokenizer_hf: SKIP: the tokenizers package does not load here" \
         "(no prebuilt native binary for $(uname -sm)?)"
    (cd "$JS" && node -e "require('tokenizers')" 2>&1 | head -3)
    exit 77
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4_tok_hf.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$JS" && node hf_check.js "$DS4" "$WORK"
