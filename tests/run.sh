#!/bin/sh
# tests/run.sh -- runs every test module of the project and sums the results.
#
# The protocol (C: tests/unit/check.h, Python: tests/pylib/tcase.py, fuzzing:
# tests/fuzz/run.sh): a module first prints "PLAN: name name ...", the cases
# it is about to run, then one line per case: "PASS: name", "FAIL: name" or
# "SKIP: name (why)". The runner holds each module to its plan:
#   - a planned case that printed no result (the module crashed, exited
#     early, or hung) counts as failed, and so does a result outside the plan;
#   - a module that prints no plan counts as one failure;
#   - a module that exits non-zero (or is killed) with no failure counted
#     otherwise counts as one failure;
#   - results outside the plan fail (and do not count as passes);
#   - a module runs at most TEST_MODULE_TIMEOUT seconds (default 900), then
#     it is killed and its unfinished cases fail;
#   - a skip is printed and counted as a skip, never as a pass;
#   - a unit test whose binary is missing (no build) is a failure.
# The modules are the sources: tests/unit/test_*.c (binaries in $BUILD/tests),
# tests/{runner,conformance,e2e}/test_*.py, tests/fuzz/run.sh (TESTS_ROOT
# names another tree: tests/runner/test_runner.py runs the runner on one;
# TEST_DIRS names other directories of Python modules: `make deb-test` runs
# tests/package with TEST_DIRS=package TESTS=package/).
# TESTS=pattern restricts the run to modules whose label contains it; inside
# a module, TESTS_FILTER=substring skips the other cases (counted as skips).
# The last line is "N passed, N failed, N skipped"; the exit status is 1 if any
# case failed or nothing ran.
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.." || exit 2
TIMEOUT=${TEST_MODULE_TIMEOUT:-900}
ROOT=${TESTS_ROOT:-tests}
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
pass=0; fail=0; skip=0; modules=0; failed=""

[ -n "${TESTS_FILTER:-}" ] &&
	echo "note: TESTS_FILTER=$TESTS_FILTER is set: the other cases are skipped"

# judge <label> <output file> <exit status>: prints the module's verdicts and
# adds them to the totals.
judge() {
	label=$1 out=$2 rc=$3
	plan=$(sed -n 's/^PLAN:[ ]*//p' "$out" | head -n 1)
	results=$(grep -E '^(PASS|FAIL|SKIP): ' "$out")
	[ -n "$results" ] && echo "$results" | sed 's/^/   /'
	p=$(grep -c '^PASS: ' "$out"); f=$(grep -c '^FAIL: ' "$out"); s=$(grep -c '^SKIP: ' "$out")
	if ! grep -q '^PLAN:' "$out"; then
		p=0; s=0                # cases of an unknown plan count for nothing
		f=$((f + 1)); echo "   FAIL: $label printed no PLAN line (its cases are unknown)"
	else
		for c in $plan; do
			if ! grep -qE "^(PASS|FAIL|SKIP): $c( |\$)" "$out"; then
				f=$((f + 1)); echo "   FAIL: $c (planned, never finished)"
			fi
		done
		echo "$results" | while read -r kind c _; do
			case " $plan " in
			*" $c "*) ;;
			*) [ -n "$c" ] && echo "$kind $c" ;;
			esac
		done >"$out.outside"
		while read -r kind c; do
			f=$((f + 1)); echo "   FAIL: $c (a result outside the plan)"
			case "$kind" in PASS:) p=$((p - 1)) ;; SKIP:) s=$((s - 1)) ;; esac
		done <"$out.outside"
	fi
	# a crash or a kill is already counted through the cases it left unrun;
	# it is one failure more only when nothing else says so
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		echo "   FAIL: $label killed after ${TIMEOUT}s (TEST_MODULE_TIMEOUT)"
		[ "$f" -eq 0 ] && f=1
	elif [ "$rc" -ne 0 ]; then
		echo "   FAIL: $label exited with status $rc"
		[ "$f" -eq 0 ] && f=1
	fi
	if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then
		# why, first: each traceback's last line and the cases' NOTE lines,
		# which the processes' logs below would push out of sight
		echo "   --- errors and notes of $label ---"
		grep -E '^([A-Za-z_.]*(Error|Exception)|NOTE:)' "$out" | tail -n 12 | sed 's/^/   | /'
		echo "   --- output of $label (last 40 lines) ---"; tail -n 40 "$out" | sed 's/^/   | /'
	fi
	pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
	[ "$f" -ne 0 ] && failed="$failed $label:$(grep '^FAIL: ' "$out" | cut -d' ' -f2 | tr '\n' ',')"
	return 0
}

run_one() { # $1 = label, rest = command
	label=$1; shift
	case "$label" in *"${TESTS:-}"*) ;; *) return ;; esac
	modules=$((modules + 1))
	out="$log/$(echo "$label" | tr '/ ' '__').out"
	echo "== $label"
	timeout -k 10 "$TIMEOUT" "$@" >"$out" 2>&1
	judge "$label" "$out" $?
}

missing() { # $1 = label, $2 = what is missing
	case "$1" in *"${TESTS:-}"*) ;; *) return ;; esac
	modules=$((modules + 1))
	echo "== $1"
	echo "   FAIL: $1 ($2)"
	fail=$((fail + 1)); failed="$failed $1"
}

for src in "$ROOT"/unit/test_*.c; do
	[ -f "$src" ] || continue
	t="$BUILD/tests/$(basename "$src" .c)"
	if [ -x "$t" ]; then
		run_one "unit/$(basename "$t")" "$t"
	else
		missing "unit/$(basename "$t")" "no binary $t: build with make"
	fi
done
for dir in ${TEST_DIRS:-runner conformance e2e}; do
	for t in "$ROOT"/$dir/test_*.py; do
		[ -f "$t" ] && run_one "$dir/$(basename "$t")" python3 "$t"
	done
done
[ -f "$ROOT"/fuzz/run.sh ] && run_one "fuzz" sh "$ROOT"/fuzz/run.sh

# the failures again, by name, next to the verdict (a log's tail is often
# all that is shown of it)
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed, $skip skipped"
if [ "$modules" -eq 0 ]; then
	echo "no test module matched TESTS=${TESTS:-}" >&2
	exit 1
fi
[ "$fail" -eq 0 ]
