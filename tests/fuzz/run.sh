#!/bin/sh
# tests/fuzz/run.sh -- builds and runs the libFuzzer target of the SPOP codec.
#
# Owns: the fuzzing step of the test suite. Builds tests/fuzz/fuzz_spop.c with
# spoe/*.c under clang -fsanitize=fuzzer,address,undefined into
# ${BUILD:-build}/fuzz/, then fuzzes for FUZZ_SECONDS (default 20) with
# -max_len=4096, starting from the committed seeds in tests/fuzz/corpus/
# (regenerate with tests/fuzz/gen_corpus.py). New inputs and crash artifacts
# go to ${BUILD}/fuzz/, never into the repository. Prints "PASS: fuzz_spop"
# or "FAIL: fuzz_spop" (tests/run.sh counts it) and exits non-zero on failure.
# A missing clang or libFuzzer is a failure, not a skip.
cd "$(dirname "$0")/../.." || exit 2
BUILD=${BUILD:-build}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CLANG=${CLANG:-clang}
out="$BUILD/fuzz"
bin="$out/fuzz_spop"
mkdir -p "$out/corpus" "$out/artifacts" || { echo "FAIL: fuzz_spop (cannot create $out)"; exit 1; }

fail() { echo "FAIL: fuzz_spop ($1)"; exit 1; }

command -v "$CLANG" >/dev/null 2>&1 || fail "$CLANG not found"
"$CLANG" -std=c11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -Ispoe \
	tests/fuzz/fuzz_spop.c spoe/*.c -o "$bin" >"$out/build.log" 2>&1 ||
	{ tail -n 20 "$out/build.log"; fail "build failed (clang with libFuzzer: libclang-rt-dev?)"; }

# The first corpus directory is the writable one: it lives in the build dir.
"$bin" -max_len=4096 -max_total_time="$FUZZ_SECONDS" -timeout=10 \
	-print_final_stats=1 -dict=tests/fuzz/spop.dict \
	-artifact_prefix="$out/artifacts/" \
	"$out/corpus" tests/fuzz/corpus >"$out/fuzz.log" 2>&1
rc=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz.log" | tail -n 1)
eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/fuzz.log" | tail -n 1)
cov=$(grep -o 'cov: [0-9]*' "$out/fuzz.log" | tail -n 1)
echo "fuzz_spop: ${runs:-?} runs, ${eps:-?} exec/s, ${cov:-cov: ?}, ${FUZZ_SECONDS}s, corpus $out/corpus"
if [ "$rc" -ne 0 ]; then
	tail -n 40 "$out/fuzz.log"
	echo "artifacts: $(ls "$out/artifacts" 2>/dev/null | tr '\n' ' ')"
	fail "exit status $rc, see $out/fuzz.log"
fi
echo "PASS: fuzz_spop"
