#!/bin/bash
# test_model_moe_cli.sh — `ds4 bench moe --study` balancing options of run (c) on a tiny corpus:
# the SPEC rule by default, --bias-ema / --bias-every / --bias-calib / --bias-settle (--settle-ema) named in the output, the
# calibration blocks taken out of every run's training text, bad values rejected.
# Usage: bash tests/test_model_moe_cli.sh path/to/ds4
DS4=${1:?usage: $0 path/to/ds4}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ds4_moe_cli.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "test_model_moe_cli.sh: FAIL: $*" >&2; exit 1; }

for i in $(seq 1 1500); do
    echo "line $i: the cat sat on the mat $((i % 7)) times. a dog ran to park $((i % 13)) and the bird sang."
done > "$WORK/corpus.txt"
study() {
    OMP_NUM_THREADS=1 "$DS4" bench moe --study --runs c --data "$WORK/corpus.txt" --val "$WORK/corpus.txt" \
        --vocab 300 --hidden 32 --layers 2 --experts 16 --groups 8 --moe-inter 8 --steps 4 --batch 2 --seq 32 \
        --eval-tokens 4096 --holdout-every 4 --log-every 2 "$@"
}
study >"$WORK/spec" 2>&1 || fail "study (SPEC rule): $(tail -5 "$WORK/spec")"
grep -q "each step's own (SPEC)" "$WORK/spec" || fail "default rule is not the SPEC per-step sign rule"
grep -q '"bench":"moe_study"' "$WORK/spec" || fail "no JSON line"
grep -q 'window util' "$WORK/spec" || fail "no window utilization in the progress lines"

study --bias-calib 3 --bias-ema 0.5 --diag >"$WORK/calib" 2>&1 || fail "study (calib): $(tail -5 "$WORK/calib")"
grep -q 'calibration stream' "$WORK/calib" || fail "--bias-calib not named in the output"
grep -q 'EMA of the step loads, beta 0.5' "$WORK/calib" || fail "--bias-ema not named in the output"
grep -q 'diag: utilization on [0-9]* trained tokens' "$WORK/calib" || fail "--diag printed no trained-token line"
grep -q 'diag: held-out utilization with the live bias' "$WORK/calib" || fail "--diag printed no bias-average line"
n0=$(sed -n 's/^ds4 bench moe --study: \([0-9]*\) train.*/\1/p' "$WORK/spec")
n1=$(sed -n 's/^ds4 bench moe --study: \([0-9]*\) train.*/\1/p' "$WORK/calib")
[ -n "$n0" ] && [ -n "$n1" ] && [ "$n1" -lt "$n0" ] || fail "calibration blocks not removed from the training text ($n0 -> $n1)"

# --bias-settle: forward-only sign-rule batches after training move the saved bias (--settle-ema: on an
# EMA of the batch loads, another bias)
study --save "$WORK/s0" >/dev/null 2>&1 || fail "study --save"
study --save "$WORK/s1" --bias-settle 3 >"$WORK/settle" 2>&1 || fail "study --bias-settle: $(tail -5 "$WORK/settle")"
grep -q 'bias settles on 3 forward-only batches' "$WORK/settle" || fail "--bias-settle not named in the output"
cmp -s "$WORK/s0/c/model.safetensors" "$WORK/s1/c/model.safetensors" && fail "--bias-settle left the model unchanged"
study --save "$WORK/s2" --bias-settle 3 --settle-ema 0.9 >/dev/null 2>&1 || fail "study --bias-settle --settle-ema"
cmp -s "$WORK/s1/c/model.safetensors" "$WORK/s2/c/model.safetensors" && fail "--settle-ema changed nothing"
study --bias-settle 3 --settle-ema 1 >/dev/null 2>&1 && fail "--settle-ema 1 accepted"

study --bias-every 2 >"$WORK/every" 2>&1 || fail "study (--bias-every): $(tail -5 "$WORK/every")"
grep -q 'summed over 2 steps' "$WORK/every" || fail "--bias-every not named in the output"
study --bias-ema 1 >/dev/null 2>&1 && fail "--bias-ema 1 accepted"
study --bias-every 0 >/dev/null 2>&1 && fail "--bias-every 0 accepted"
exit 0
