#!/usr/bin/env bash
# tests/bench/run.sh -- Tollgate benchmarks (`make bench`). See README.md here.
#
# One run, everything started here on free loopback ports in a temp dir:
#  a) spop-load -> agent over TCP and a unix socket, depth 1 and 64, 1 and 4
#     connections; the agent pinned to one CPU (taskset) to check the target
#     ">= 100k NOTIFY/s on one core".
#  b) wrk -> HAProxy alone vs HAProxy + agent (filter spoe, one trivial message
#     per request), same upstream; the ratio (target >= 0.7) and the p50
#     latency the agent adds at concurrency 1.
# Ends with markdown tables. Exit status: 0 if every measurement ran without
# error (a performance MISS is reported but only fails with BENCH_STRICT=1),
# 1 otherwise. Every process started here is stopped on exit.
#
# Environment: BUILD (build dir, default build), HAPROXY (default
# /usr/sbin/haproxy), SPOP_SECS (2), SPOP_WARMUP (0.5), SPOP_RUNS (2), HTTP_SECS (3),
# HTTP_C1_SECS (2), HTTP_ROUNDS (5), HTTP_CONNS (50), WRK_THREADS (2), HAPROXY_THREADS (2),
# BENCH_STRICT (0), KEEP (1: keep the temp dir), AGENT_CPU (0), LOAD_CPU (1).
set -u
cd "$(dirname "$0")/../.." || exit 2

BUILD=${BUILD:-build}
AGENT=$BUILD/tollgate
LOAD=$BUILD/spop-load
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
SPOP_SECS=${SPOP_SECS:-2}
SPOP_WARMUP=${SPOP_WARMUP:-0.5}
SPOP_RUNS=${SPOP_RUNS:-2}
HTTP_SECS=${HTTP_SECS:-3}
HTTP_C1_SECS=${HTTP_C1_SECS:-2}
HTTP_ROUNDS=${HTTP_ROUNDS:-5}
HTTP_CONNS=${HTTP_CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
HAPROXY_THREADS=${HAPROXY_THREADS:-2}
BENCH_STRICT=${BENCH_STRICT:-0}
AGENT_CPU=${AGENT_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGET_NOTIFY=100000
TARGET_RATIO=0.7
HERE=tests/bench

failed=0            # measurement errors (always fail the run)
missed=0            # performance targets missed
pids=()

say()  { printf '%s\n' "$*"; }
err()  { printf 'bench: ERROR: %s\n' "$*" >&2; failed=1; }
die()  { printf 'bench: FATAL: %s\n' "$*" >&2; failed=1; exit 1; }

tmp=$(mktemp -d /tmp/tollgate-bench.XXXXXX) || exit 2

cleanup() {
	local p i
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for i in $(seq 1 30); do
		local alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ "$alive" -eq 0 ] && break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	if [ "${KEEP:-0}" = 1 ] || [ "$failed" -ne 0 ]; then
		say "bench: logs kept in $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'failed=1; exit 130' INT TERM

show_log() { # $1 = file, $2 = label
	[ -s "$1" ] || return 0
	printf -- '--- %s (last 30 lines of %s) ---\n' "$2" "$1" >&2
	tail -n 30 "$1" | sed 's/^/  | /' >&2
}

# ---- prerequisites ---------------------------------------------------------
for f in "$AGENT" "$LOAD"; do
	[ -x "$f" ] || die "$f not built (make BUILD=$BUILD)"
done
[ -x "$HAPROXY" ] || die "$HAPROXY not found"
command -v wrk >/dev/null || die "wrk not installed (apt-get install wrk)"
"$LOAD" --selftest >"$tmp/selftest.log" 2>&1 || { show_log "$tmp/selftest.log" selftest; die "spop-load --selftest failed"; }

ncpu=$(nproc)
pin_agent=(); pin_load=()
if command -v taskset >/dev/null && [ "$ncpu" -ge 2 ]; then
	pin_agent=(taskset -c "$AGENT_CPU")
	pin_load=(taskset -c "$LOAD_CPU")
	pinned="agent on CPU $AGENT_CPU, spop-load on CPU $LOAD_CPU"
elif command -v taskset >/dev/null; then
	pin_agent=(taskset -c 0)
	pinned="agent on CPU 0 (single CPU: spop-load shares it)"
else
	pinned="not pinned (no taskset)"
fi

# ---- free loopback ports ----------------------------------------------------
free_ports() { # $1 = how many; binds port 0 and keeps the sockets until all are chosen
	python3 - "$1" <<'EOF' 2>/dev/null && return 0
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
	# fallback: random ports nobody answers on
	local out=() p
	while [ "${#out[@]}" -lt "$1" ]; do
		p=$((20000 + RANDOM % 40000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
		case " ${out[*]} " in *" $p "*) continue ;; esac
		out+=("$p")
	done
	echo "${out[*]}"
}
read -r SPOP_PORT HTTP_PORT SETTLE_PORT ALONE_PORT AGENT_FE_PORT UP_PORT <<<"$(free_ports 6)"
[ -n "${UP_PORT:-}" ] || die "could not find free ports"
UNIX_PATH=$tmp/agent.sock

subst() { # template -> stdout
	sed -e "s#@SPOP_PORT@#$SPOP_PORT#g" -e "s#@HTTP_PORT@#$HTTP_PORT#g" \
	    -e "s#@SETTLE_PORT@#$SETTLE_PORT#g" -e "s#@ALONE_PORT@#$ALONE_PORT#g" \
	    -e "s#@AGENT_FE_PORT@#$AGENT_FE_PORT#g" -e "s#@UP_PORT@#$UP_PORT#g" \
	    -e "s#@UNIX_PATH@#$UNIX_PATH#g" -e "s#@STATE_DIR@#$tmp/state#g" \
	    -e "s#@SPOE_CFG@#$tmp/spoe.cfg#g" -e "s#@NBTHREAD@#$HAPROXY_THREADS#g" "$1"
}
mkdir -p "$tmp/state"
subst "$HERE/tollgate-bench.yaml" >"$tmp/tollgate.yaml"
subst "$HERE/haproxy-bench.cfg" >"$tmp/haproxy.cfg"
subst "$HERE/spoe-bench.cfg" >"$tmp/spoe.cfg"

# ---- the agent ---------------------------------------------------------------
"${pin_agent[@]}" "$AGENT" --config "$tmp/tollgate.yaml" >"$tmp/agent.log" 2>&1 &
AGENT_PID=$!
pids+=("$AGENT_PID")
ready=0
for _ in $(seq 1 100); do
	kill -0 "$AGENT_PID" 2>/dev/null || break
	if "$LOAD" --tcp "127.0.0.1:$SPOP_PORT" -n 1 -q >"$tmp/ready.log" 2>&1; then ready=1; break; fi
	sleep 0.1
done
if [ "$ready" -ne 1 ]; then
	show_log "$tmp/ready.log" "spop-load readiness probe"
	show_log "$tmp/agent.log" agent
	kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited (config $tmp/tollgate.yaml)"
	die "the agent does not answer SPOP on 127.0.0.1:$SPOP_PORT within 10 s"
fi
unix_ok=1
if ! "$LOAD" --unix "$UNIX_PATH" -n 1 -q >"$tmp/ready-unix.log" 2>&1; then
	show_log "$tmp/ready-unix.log" "spop-load unix probe"
	err "the agent does not answer SPOP on unix socket $UNIX_PATH"
	unix_ok=0
fi

TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# ---- a) SPOP -------------------------------------------------------------------
say "== a) SPOP: spop-load -> agent ($pinned), ${SPOP_WARMUP}s warm-up + ${SPOP_SECS}s, best of $SPOP_RUNS runs each"
spop_rows=()
best_rate=0; best_desc=""; best_cap=0
field() { # $1 = key, $2 = spop-load line
	sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"
}
run_spop() { # $1 = transport, $2 = conns, $3 = depth: best of SPOP_RUNS runs
	local where line rc run best_line="" best_rc=0 best_r=-1 r log c0 c1 acked cap
	if [ "$1" = unix ]; then
		where=(--unix "$UNIX_PATH")
		if [ "$unix_ok" -ne 1 ]; then
			spop_rows+=("| $1 | $2 | $3 | n/a | n/a | n/a | n/a | n/a | unix socket not served |")
			return
		fi
	else
		where=(--tcp "127.0.0.1:$SPOP_PORT")
	fi
	for run in $(seq 1 "$SPOP_RUNS"); do
		log="$tmp/spop-$1-c$2-p$3-$run.log"
		c0=$(cpu_ticks "$AGENT_PID")
		"${pin_load[@]}" "$LOAD" "${where[@]}" -c "$2" -p "$3" -w "$SPOP_WARMUP" -d "$SPOP_SECS" >"$log" 2>&1
		rc=$?
		c1=$(cpu_ticks "$AGENT_PID")
		line=$(grep '^spop-load: transport=' "$log" | tail -n 1)
		acked=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' "$log")
		# NOTIFYs per second of agent CPU: what one core does when nothing
		# else wants it (stolen time does not count)
		cap=$(awk -v n="${acked:-0}" -v t=$((c1 - c0)) -v hz="$TICK" 'BEGIN { if (t > 0) printf "%.0f", n / (t / hz); else print "n/a" }')
		line="$line agent_cpu_rate=$cap/s"
		say "   $line"
		if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
			err "spop-load ($1, -c $2, -p $3) exited with status $rc"
			show_log "$log" spop-load
			show_log "$tmp/agent.log" agent
			kill -0 "$AGENT_PID" 2>/dev/null || die "the agent died during the SPOP benchmark"
			best_line=$line; best_rc=$rc
			break
		fi
		r=$(field rate "$line"); r=${r%/s}
		if [ "${r:-0}" -gt "$best_r" ]; then best_r=${r:-0}; best_line=$line; fi
	done
	line=$best_line; rc=$best_rc
	local rate p50 p99 p999 errors
	rate=$(field rate "$line"); rate=${rate%/s}
	p50=$(field p50 "$line"); p99=$(field p99 "$line"); p999=$(field p99.9 "$line")
	errors=$(field errors "$line")
	cap=$(field agent_cpu_rate "$line"); cap=${cap%/s}
	spop_rows+=("| $1 | $2 | $3 | ${rate:-n/a} | ${p50%us} | ${p99%us} | ${p999%us} | ${cap:-n/a} | ${errors:-?} (exit $rc) |")
	if [ -n "$cap" ] && [ "$cap" != n/a ] && [ "$cap" -gt "$best_cap" ]; then best_cap=$cap; fi
	if [ "$rc" -eq 0 ] && [ -n "$rate" ] && [ "$rate" -gt "$best_rate" ]; then
		best_rate=$rate; best_desc="$1, -c $2, -p $3"
	fi
}
for tr in tcp unix; do
	for c in 1 4; do
		for p in 1 64; do
			run_spop "$tr" "$c" "$p"
		done
	done
done
if [ "$best_rate" -ge "$TARGET_NOTIFY" ]; then spop_verdict=PASS; else spop_verdict=MISS; missed=1; fi
say "   target >= $TARGET_NOTIFY NOTIFY/s on one core: best $best_rate/s ($best_desc), $best_cap per agent CPU-second -> $spop_verdict"

# ---- b) HTTP -------------------------------------------------------------------
# The agent may now use every CPU, like HAProxy and wrk.
if [ "${#pin_agent[@]}" -gt 0 ]; then
	taskset -a -p -c "0-$((ncpu - 1))" "$AGENT_PID" >/dev/null 2>&1
fi
"$HAPROXY" -c -f "$tmp/haproxy.cfg" >"$tmp/haproxy-check.log" 2>&1 || {
	show_log "$tmp/haproxy-check.log" "haproxy -c"; die "haproxy rejects $tmp/haproxy.cfg"; }
"$HAPROXY" -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
HAPROXY_PID=$!
pids+=("$HAPROXY_PID")
ready=0
for _ in $(seq 1 100); do
	kill -0 "$HAPROXY_PID" 2>/dev/null || break
	a=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ALONE_PORT/" 2>/dev/null)
	b=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AGENT_FE_PORT/" 2>/dev/null)
	if [ "$a" = 200 ] && [ "$b" = 200 ]; then ready=1; break; fi
	sleep 0.1
done
if [ "$ready" -ne 1 ]; then
	show_log "$tmp/haproxy.log" haproxy
	show_log "$tmp/agent.log" agent
	die "HAProxy not ready (alone: ${a:-?}, with agent: ${b:-?}; 503 there means no verdict from the agent)"
fi

to_us() { # wrk duration (12.3us, 1.2ms, 1.1s, 2m) -> microseconds
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1e6;
		else if (u == "m") m = 6e7; else m = -1
		if (m < 0) print "n/a"; else printf "%.0f", n * m }'
}
declare -A W
per_req() { # $1 = key, $2 = hcpu|acpu -> CPU microseconds per request
	awk -v t="${W[$1.$2]:-0}" -v n="${W[$1.req]:-0}" -v hz="$TICK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }'
}
run_wrk() { # $1 = key, $2 = port, $3 = threads, $4 = conns, $5 = secs, $6 = round
	local log="$tmp/wrk-$1-$6.log" rc h0 a0 h1 a1 nreq
	h0=$(cpu_ticks "$HAPROXY_PID"); a0=$(cpu_ticks "$AGENT_PID")
	wrk -t"$3" -c"$4" -d"$5"s --latency "http://127.0.0.1:$2/" >"$log" 2>&1
	rc=$?
	h1=$(cpu_ticks "$HAPROXY_PID"); a1=$(cpu_ticks "$AGENT_PID")
	nreq=$(awk '/requests in/ {print $1}' "$log")
	W[$1.req]=$(( ${W[$1.req]:-0} + ${nreq:-0} ))
	W[$1.hcpu]=$(( ${W[$1.hcpu]:-0} + h1 - h0 ))
	W[$1.acpu]=$(( ${W[$1.acpu]:-0} + a1 - a0 ))
	local rps p50 p99 non2xx sockerr
	rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$log")
	p50=$(awk '$1 == "50%" {print $2}' "$log")
	p99=$(awk '$1 == "99%" {print $2}' "$log")
	non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$log")
	sockerr=$(sed -n 's/.*Socket errors: //p' "$log")
	W[$1.rps.$6]=${rps:-0}; W[$1.p50.$6]=$(to_us "${p50:-x}"); W[$1.p99.$6]=$(to_us "${p99:-x}")
	W[$1.bad]=$(( ${W[$1.bad]:-0} + ${non2xx:-0} ))
	say "   round $6 $1: ${W[$1.rps.$6]} req/s, p50 ${W[$1.p50.$6]} us, p99 ${W[$1.p99.$6]} us, non-2xx ${non2xx:-0}${sockerr:+, socket errors: $sockerr}"
	if [ "$rc" -ne 0 ] || [ -z "$rps" ] || [ "${non2xx:-0}" -ne 0 ] || [ -n "$sockerr" ]; then
		err "wrk $1 (round $6): exit $rc, non-2xx ${non2xx:-0}${sockerr:+, socket errors: $sockerr} (503 = the agent gave no verdict)"
		show_log "$log" wrk
		show_log "$tmp/haproxy.log" haproxy
		show_log "$tmp/agent.log" agent
	fi
}
median() { # numbers -> median (n/a ignored)
	printf '%s\n' "$@" | grep -E '^[0-9]+$' | sort -n | awk '{ v[NR] = $1 } END {
		if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
summarize() { # $1 = key: medians over the rounds
	local m r vals
	for m in rps p50 p99; do
		vals=()
		for r in $(seq 1 "$HTTP_ROUNDS"); do vals+=("${W[$1.$m.$r]:-n/a}"); done
		W[$1.$m]=$(median "${vals[@]}")
	done
	W[$1.bad]=${W[$1.bad]:-0}
}
say "== b) HTTP: wrk -> HAProxy (nbthread $HAPROXY_THREADS) alone vs + agent, upstream = HAProxy 'http-request return 200'"
say "   $HTTP_ROUNDS interleaved rounds: ${HTTP_SECS}s at $HTTP_CONNS conns (wrk -t$WRK_THREADS), ${HTTP_C1_SECS}s at 1 conn; medians reported"
# warm-up: opens the SPOE connections, faults in the pages
wrk -t1 -c"$HTTP_CONNS" -d1s "http://127.0.0.1:$ALONE_PORT/" >/dev/null 2>&1
wrk -t1 -c"$HTTP_CONNS" -d1s "http://127.0.0.1:$AGENT_FE_PORT/" >/dev/null 2>&1
for r in $(seq 1 "$HTTP_ROUNDS"); do
	run_wrk alone "$ALONE_PORT" "$WRK_THREADS" "$HTTP_CONNS" "$HTTP_SECS" "$r"
	run_wrk agent "$AGENT_FE_PORT" "$WRK_THREADS" "$HTTP_CONNS" "$HTTP_SECS" "$r"
done
for r in $(seq 1 "$HTTP_ROUNDS"); do
	run_wrk alone-c1 "$ALONE_PORT" 1 1 "$HTTP_C1_SECS" "$r"
	run_wrk agent-c1 "$AGENT_FE_PORT" 1 1 "$HTTP_C1_SECS" "$r"
done
for k in alone agent alone-c1 agent-c1; do summarize "$k"; done
kill -0 "$AGENT_PID" 2>/dev/null || { show_log "$tmp/agent.log" agent; die "the agent died during the HTTP benchmark"; }
kill -0 "$HAPROXY_PID" 2>/dev/null || { show_log "$tmp/haproxy.log" haproxy; die "HAProxy died during the HTTP benchmark"; }

# Paired per round (alone then agent, back to back), so a slow drift of the
# shared machine cancels out; the medians of the pairs are reported.
pair() { # $1 = op (ratio|diff), $2 = key a, $3 = key b, $4 = metric -> median over rounds
	local r vals=() v
	for r in $(seq 1 "$HTTP_ROUNDS"); do
		v=$(awk -v a="${W[$2.$4.$r]:-x}" -v b="${W[$3.$4.$r]:-x}" -v op="$1" 'BEGIN {
			if (a !~ /^[0-9]+$/ || b !~ /^[0-9]+$/) exit
			if (op == "ratio") { if (b > 0) printf "%.0f", 1000 * a / b }
			else printf "%.0f", a - b + 1000000 }')
		[ -n "$v" ] && vals+=("$v")
	done
	v=$(median "${vals[@]}")
	[ "$v" = n/a ] && { echo n/a; return; }
	if [ "$1" = ratio ]; then awk -v v="$v" 'BEGIN { printf "%.2f", v / 1000 }'
	else printf '%+d' $((v - 1000000)); fi
}
ratio=$(pair ratio agent alone rps)
# CPU per request (utime+stime of the processes, over all rounds): steadier
# than req/s on a shared machine. cpu_ratio = the throughput ratio to expect
# when the box is CPU-bound: HAProxy-alone cost / (HAProxy + agent cost).
hcpu_alone=$(per_req alone hcpu); hcpu_agent=$(per_req agent hcpu); acpu_agent=$(per_req agent acpu)
cpu_ratio=$(awk -v a="$hcpu_alone" -v b="$hcpu_agent" -v c="$acpu_agent" 'BEGIN { if (b + c > 0 && a > 0) printf "%.2f", a / (b + c); else print "n/a" }')
ratios=$(for r in $(seq 1 "$HTTP_ROUNDS"); do awk -v a="${W[agent.rps.$r]:-0}" -v b="${W[alone.rps.$r]:-0}" 'BEGIN { if (b > 0) printf "%.2f ", a / b; else printf "n/a " }'; done)
if [ "$ratio" != n/a ] && awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN { exit !(r >= t) }'; then http_verdict=PASS; else http_verdict=MISS; missed=1; fi
added_p50=$(pair diff agent-c1 alone-c1 p50)
added_p99=$(pair diff agent-c1 alone-c1 p99)
added_p50_c50=$(pair diff agent alone p50)

# ---- report --------------------------------------------------------------------
cat <<EOF

## Tollgate bench ($(date -u '+%Y-%m-%d %H:%M UTC'), $ncpu CPUs, $("$HAPROXY" -v 2>/dev/null | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p'))

### SPOP: spop-load -> agent (tollgate-echo, 3 args), $pinned; best of $SPOP_RUNS runs of ${SPOP_SECS}s

| transport | conns | depth | NOTIFY/s | p50 µs | p99 µs | p99.9 µs | NOTIFY per agent CPU-s | errors |
|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${spop_rows[@]}")

### HTTP: wrk (GET /, keep-alive) -> HAProxy, upstream answered by HAProxy itself; medians of $HTTP_ROUNDS interleaved rounds

| setup | wrk conns | requests/s | p50 µs | p99 µs | non-2xx (all rounds) |
|---|---|---|---|---|---|
| HAProxy alone | $HTTP_CONNS | ${W[alone.rps]} | ${W[alone.p50]} | ${W[alone.p99]} | ${W[alone.bad]} |
| HAProxy + agent | $HTTP_CONNS | ${W[agent.rps]} | ${W[agent.p50]} | ${W[agent.p99]} | ${W[agent.bad]} |
| HAProxy alone | 1 | ${W[alone-c1.rps]} | ${W[alone-c1.p50]} | ${W[alone-c1.p99]} | ${W[alone-c1.bad]} |
| HAProxy + agent | 1 | ${W[agent-c1.rps]} | ${W[agent-c1.p50]} | ${W[agent-c1.p99]} | ${W[agent-c1.bad]} |

### Targets

| target | measured | verdict |
|---|---|---|
| ≥ $TARGET_NOTIFY NOTIFY/s, agent on one core | $best_rate/s ($best_desc); CPU-bound capacity $best_cap/s | $spop_verdict |
| HAProxy + agent ≥ $TARGET_RATIO × HAProxy alone (req/s, $HTTP_CONNS conns; median of the rounds' ratios: ${ratios% }) | ${ratio}× | $http_verdict |
| latency added by the agent at concurrency 1 (median of the rounds' differences) | p50 ${added_p50} µs, p99 ${added_p99} µs | (info) |
| latency added by the agent at $HTTP_CONNS conns | p50 ${added_p50_c50} µs | (info) |
| CPU per request at $HTTP_CONNS conns: HAProxy alone / HAProxy with agent + agent | ${hcpu_alone} µs / ${hcpu_agent} + ${acpu_agent} µs (CPU-bound ratio ${cpu_ratio}×) | (info) |

EOF

if [ "$failed" -ne 0 ]; then
	say "bench: FAILED (measurement errors above)"
	exit 1
fi
if [ "$missed" -ne 0 ] && [ "$BENCH_STRICT" = 1 ]; then
	say "bench: target MISS (BENCH_STRICT=1)"
	exit 1
fi
exit 0
