#!/bin/sh
# tests/compat.sh -- `make compat`: the conformance and end-to-end suites
# against every HAProxy given, then one table of version x suite.
#
#   HAPROXY_VERSIONS="path ..."   the binaries to run (default: Debian's
#                                 haproxy and every ../shared/haproxy/*/haproxy)
#
# Each suite is tests/run.sh with HAPROXY=path and TESTS=conformance or
# TESTS=e2e; its log is kept in $COMPAT_LOGS (default build/compat/). A
# binary that does not run (`haproxy -v` fails: a missing library) is a
# failure of that version, not a skip. The last line is "N passed, N failed"
# over every version and suite; the exit status is 1 if anything failed.
cd "$(dirname "$0")/.." || exit 2
BUILD=${BUILD:-build}
export BUILD
LOGS=${COMPAT_LOGS:-$BUILD/compat}
mkdir -p "$LOGS"

if [ -z "${HAPROXY_VERSIONS:-}" ]; then
	HAPROXY_VERSIONS=$(command -v haproxy || echo /usr/sbin/haproxy)
	if [ -d ../shared/haproxy ]; then
		for h in ../shared/haproxy/*/haproxy; do
			[ -x "$h" ] && HAPROXY_VERSIONS="$HAPROXY_VERSIONS $(cd "$(dirname "$h")" && pwd)/haproxy"
		done
	else
		echo "compat: ../shared/haproxy is absent: only Debian's HAProxy is run (other versions skipped)"
	fi
fi

table=$LOGS/table
: >"$table"
tp=0; tf=0
for h in $HAPROXY_VERSIONS; do
	v=$("$h" -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -n 1)
	if [ -z "$v" ]; then
		echo "compat: $h does not run (haproxy -v failed)"
		printf '%-28s %-12s %6s %6s\n' "$h" "(does not run)" 0 1 >>"$table"
		tf=$((tf + 1))
		continue
	fi
	for suite in conformance e2e; do
		log=$LOGS/$v-$suite.log
		echo "== HAProxy $v ($h): $suite"
		HAPROXY=$h TESTS=$suite tests/run.sh >"$log" 2>&1
		last=$(tail -n 1 "$log")
		p=$(echo "$last" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
		f=$(echo "$last" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
		if [ -z "$p" ] || [ -z "$f" ]; then
			p=0; f=1
			echo "   no result line: see $log"
		fi
		grep -E '^   FAIL: ' "$log" | sed 's/^/   /'
		# what failed and why, so that a CI log alone explains a failure
		[ "$f" -gt 0 ] && sed -n '/--- errors and notes of/,$p' "$log" | head -n 80 | sed 's/^/   /'
		echo "   $last"
		printf '%-28s %-12s %6s %6s\n' "$v" "$suite" "$p" "$f" >>"$table"
		tp=$((tp + p)); tf=$((tf + f))
	done
done

echo
printf '%-28s %-12s %6s %6s\n' "HAProxy" "suite" "passed" "failed"
cat "$table"
echo "$tp passed, $tf failed"
[ "$tf" -eq 0 ]
