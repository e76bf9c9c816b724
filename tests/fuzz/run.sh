#!/bin/sh
# tests/fuzz/run.sh -- builds and runs the libFuzzer targets.
#
# Owns: the fuzzing step of the test suite. Two targets, each built under
# clang -fsanitize=fuzzer,address,undefined into ${BUILD:-build}/fuzz/ and
# fuzzed for FUZZ_SECONDS (default 20) with -max_len=4096, starting from its
# committed seeds:
#   fuzz_spop    the SPOP codec (spoe/*.c), seeds tests/fuzz/corpus/
#                (regenerate with tests/fuzz/gen_corpus.py), dict spop.dict
#   fuzz_bodies  the agent's body parsers: request and response bodies,
#                settlement records (agent/*.c), seeds tests/fuzz/corpus_bodies/
# New inputs and crash artifacts go to ${BUILD}/fuzz/, never into the
# repository. Prints its plan, then "PASS: <target>" or "FAIL: <target>"
# (tests/run.sh counts them), and exits non-zero if any failed. A missing clang or libFuzzer is a
# failure, not a skip.
cd "$(dirname "$0")/../.." || exit 2
BUILD=${BUILD:-build}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CLANG=${CLANG:-clang}
LIBS="-lev -lhiredis -lmsgpackc -lcjson -lyaml -lcrypto -lz -lm -lpthread"
failed=0

# fuzz <target> <seed dir> <extra libFuzzer flags> <sources...>
fuzz() {
	name=$1 seeds=$2 flags=$3
	shift 3
	out="$BUILD/fuzz/$name"
	bin="$out/$name"
	if ! mkdir -p "$out/corpus" "$out/artifacts"; then
		echo "FAIL: $name (cannot create $out)"; failed=1; return
	fi
	if ! command -v "$CLANG" >/dev/null 2>&1; then
		echo "FAIL: $name ($CLANG not found)"; failed=1; return
	fi
	# shellcheck disable=SC2086
	if ! "$CLANG" -std=c11 -O1 -g -Wall -Wextra -Werror -D_GNU_SOURCE \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-fno-omit-frame-pointer -Ispoe -Iagent "$@" -o "$bin" $LIBS >"$out/build.log" 2>&1; then
		tail -n 20 "$out/build.log"
		echo "FAIL: $name (build failed: clang with libFuzzer, libclang-rt-dev?)"; failed=1; return
	fi
	# The first corpus directory is the writable one: it lives in the build dir.
	# shellcheck disable=SC2086
	"$bin" -max_len=4096 -max_total_time="$FUZZ_SECONDS" -timeout=10 \
		-print_final_stats=1 $flags -artifact_prefix="$out/artifacts/" \
		"$out/corpus" "$seeds" >"$out/fuzz.log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz.log" | tail -n 1)
	eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/fuzz.log" | tail -n 1)
	cov=$(grep -o 'cov: [0-9]*' "$out/fuzz.log" | tail -n 1)
	echo "$name: ${runs:-?} runs, ${eps:-?} exec/s, ${cov:-cov: ?}, ${FUZZ_SECONDS}s, corpus $out/corpus"
	if [ "$rc" -ne 0 ]; then
		tail -n 40 "$out/fuzz.log"
		echo "artifacts: $(ls "$out/artifacts" 2>/dev/null | tr '\n' ' ')"
		echo "FAIL: $name (exit status $rc, see $out/fuzz.log)"; failed=1; return
	fi
	echo "PASS: $name"
}

echo "PLAN: fuzz_spop fuzz_bodies"
fuzz fuzz_spop tests/fuzz/corpus -dict=tests/fuzz/spop.dict tests/fuzz/fuzz_spop.c spoe/*.c
# shellcheck disable=SC2046
fuzz fuzz_bodies tests/fuzz/corpus_bodies "" tests/fuzz/fuzz_bodies.c \
	$(ls agent/*.c | grep -v '^agent/main\.c$') spoe/*.c
exit "$failed"
