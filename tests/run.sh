#!/bin/sh
# tests/run.sh -- runs every test of the project and sums the results.
#
# Each test program prints one line per case, "PASS: name" or "FAIL: name"
# (C: tests/unit/check.h, Python: tests/pylib/tcase.py). A program that exits
# non-zero without a FAIL line counts as one failure, so a crash is never
# silent. The last line is "N passed, N failed"; the exit status is 1 if any
# case failed. TESTS=pattern restricts the run (a substring of the path).
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.." || exit 2
log=$(mktemp -d)
pass=0; fail=0

run_one() { # $1 = label, rest = command
	label=$1; shift
	case "$label" in *"${TESTS:-}"*) ;; *) return ;; esac
	out="$log/$(echo "$label" | tr '/ ' '__').out"
	echo "== $label"
	"$@" >"$out" 2>&1
	rc=$?
	grep -E '^(PASS|FAIL): ' "$out" | sed 's/^/   /'
	p=$(grep -c '^PASS: ' "$out"); f=$(grep -c '^FAIL: ' "$out")
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1; echo "   FAIL: $label exited with status $rc"
	fi
	if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then
		echo "   --- output of $label (last 40 lines) ---"; tail -n 40 "$out" | sed 's/^/   | /'
	fi
	pass=$((pass + p)); fail=$((fail + f))
}

for t in "$BUILD"/tests/test_*; do
	[ -x "$t" ] && run_one "unit/$(basename "$t")" "$t"
done
for dir in conformance e2e; do
	for t in tests/$dir/test_*.py; do
		[ -f "$t" ] && run_one "$dir/$(basename "$t")" python3 "$t"
	done
done
[ -x tests/fuzz/run.sh ] && run_one "fuzz" tests/fuzz/run.sh

rm -rf "$log"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
