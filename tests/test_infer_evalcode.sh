#!/usr/bin/env bash
# test_infer_evalcode.sh — the `ds4 eval` command line: code pass@k with the
# canonical solutions (all pass), broken ones (known pass@1), a timeout, sampled
# completions from models/default (pass@k fields, counts add up), mc on the
# example set, and the plain `ds4 eval --model --data` form equal to
# `ds4 eval perplexity`. Usage: bash tests/test_infer_evalcode.sh path/to/ds4
# Exit 0: all good; 1: a failure; 77: skipped (no python3 that runs in the sandbox).
set -u
DS4=${1:?usage: test_infer_evalcode.sh path/to/ds4}
case "$DS4" in /*) ;; *) DS4="$PWD/$DS4" ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CODE="$ROOT/examples/eval/code.jsonl"
MC="$ROOT/examples/eval/mc.jsonl"
MODEL="$ROOT/models/default"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4_evalcode.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fails=0
fail() { echo "test_infer_evalcode: FAIL: $*" >&2; fails=$((fails + 1)); }
# json_field FILE KEY: the value of KEY in the last line of FILE (a JSON object)
json_field() { tail -n 1 "$1" | jq -r ".\"$2\""; }

if ! command -v jq >/dev/null 2>&1; then echo "test_infer_evalcode: SKIP: jq is not installed"; exit 77; fi

# 1. canonical solutions: everything passes
if ! "$DS4" eval code --canonical --data "$CODE" > "$WORK/canon.out" 2> "$WORK/canon.err"; then
    if grep -q "no python3 on PATH" "$WORK/canon.err"; then
        echo "test_infer_evalcode: SKIP: $(cat "$WORK/canon.err")"; exit 77
    fi
    fail "eval code --canonical: $(cat "$WORK/canon.err")"
fi
[ "$(json_field "$WORK/canon.out" 'pass@1')" = "1" ] || fail "canonical pass@1 is not 1: $(tail -n 1 "$WORK/canon.out")"
[ "$(json_field "$WORK/canon.out" problems)" = "4" ] || fail "canonical: expected 4 problems"
if [ "$(json_field "$WORK/canon.out" network_isolated)" != "true" ]; then
    grep -q "WARNING: programs ran WITH network access" "$WORK/canon.err" ||
        fail "network not isolated and no warning on stderr"
fi

# 2. two of four broken, one loops forever: pass@1 = 1/4, one timeout
sed -e 's/return a + b/return a - b/' \
    -e 's/return text == text\[::-1\]/return True/' \
    -e 's/return sum(1 for ch in s.lower() if ch in .aeiou.)/while True: pass/' "$CODE" > "$WORK/broken.jsonl"
"$DS4" eval code --canonical --data "$WORK/broken.jsonl" --cpu 1 --timeout 60 --out "$WORK/broken.jsonl.out" \
    > "$WORK/broken.out" 2> "$WORK/broken.err" || fail "eval code broken: $(cat "$WORK/broken.err")"
[ "$(json_field "$WORK/broken.out" 'pass@1')" = "0.25" ] || fail "broken pass@1: $(tail -n 1 "$WORK/broken.out")"
[ "$(json_field "$WORK/broken.out" failed)" = "2" ] || fail "broken: expected 2 failed"
[ "$(json_field "$WORK/broken.out" timeouts)" = "1" ] || fail "broken: expected 1 timeout"
[ "$(wc -l < "$WORK/broken.jsonl.out")" -eq 4 ] || fail "--out: expected 4 lines"
[ "$(jq -r '.samples[0].status' < "$WORK/broken.jsonl.out" | sort | uniq -c | tr -s ' ' | paste -sd, -)" = \
  " 2 fail, 1 pass, 1 timeout" ] || fail "--out statuses: $(jq -r '.samples[0].status' < "$WORK/broken.jsonl.out" | paste -sd,)"

# 3. bad input is an error naming the line
echo '{"task_id": "x", "prompt": 3}' > "$WORK/bad.jsonl"
if "$DS4" eval code --canonical --data "$WORK/bad.jsonl" > /dev/null 2> "$WORK/bad.err"; then fail "bad data accepted"; fi
grep -q 'line 1: field "prompt" must be a string' "$WORK/bad.err" || fail "bad data error: $(cat "$WORK/bad.err")"

if [ -f "$MODEL/model.safetensors" ]; then
    # 4. sampled completions from the shipped model: counts add up, pass@k fields present
    "$DS4" eval code --model "$MODEL" --data "$CODE" --limit 2 --samples 3 --k 1,2,5 --max-tokens 24 \
        > "$WORK/gen.out" 2> "$WORK/gen.err" || fail "eval code with a model: $(cat "$WORK/gen.err")"
    total=$(tail -n 1 "$WORK/gen.out" | jq '.passed + .failed + .timeouts + .errors')
    [ "$total" = "6" ] || fail "model run: expected 6 programs, got $total"
    for k in 'pass@1' 'pass@2'; do
        v=$(json_field "$WORK/gen.out" "$k")
        [ "$v" != "null" ] || fail "model run: no $k"
    done
    [ "$(json_field "$WORK/gen.out" 'pass@5')" = "null" ] || fail "model run: pass@5 with 3 samples"
    # 5. multiple choice on the example set
    "$DS4" eval mc --model "$MODEL" --data "$MC" > "$WORK/mc.out" 2> "$WORK/mc.err" || fail "eval mc: $(cat "$WORK/mc.err")"
    [ "$(json_field "$WORK/mc.out" questions)" = "12" ] || fail "mc: expected 12 questions"
    [ "$(tail -n 1 "$WORK/mc.out" | jq '.acc >= 0 and .acc <= 1 and .correct == (.acc * 12 + 0.5 | floor)')" = "true" ] ||
        fail "mc: acc and correct disagree: $(tail -n 1 "$WORK/mc.out")"
    # 6. the plain form is perplexity, unchanged
    head -c 4000 "$ROOT/README.md" > "$WORK/text.txt"
    "$DS4" eval --model "$MODEL" --data "$WORK/text.txt" --ctx 128 | head -n 1 | sed 's/(.*//' > "$WORK/p1"
    "$DS4" eval perplexity --model "$MODEL" --data "$WORK/text.txt" --ctx 128 | head -n 1 | sed 's/(.*//' > "$WORK/p2"
    grep -q '^loss ' "$WORK/p1" || fail "ds4 eval: no loss line"
    cmp -s "$WORK/p1" "$WORK/p2" || fail "ds4 eval and ds4 eval perplexity differ: $(cat "$WORK/p1") / $(cat "$WORK/p2")"
else
    echo "test_infer_evalcode: no $MODEL: model runs skipped"
fi

if [ "$fails" -ne 0 ]; then exit 1; fi
echo "test_infer_evalcode: OK"
