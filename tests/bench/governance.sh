#!/usr/bin/env bash
# tests/bench/governance.sh -- what token governance costs, measured with wrk.
#
# One HAProxy + one tollgate agent + one redis-server, rendered by `tollgate
# haproxy-config` from tests/bench/governance.yaml, everything on free
# loopback ports in a temp dir. The same gateway serves two routes to the same
# upstream (the agent's built-in `mock` provider) for the same consumer:
#   governed  ai-token-ratelimit (limit never reached) + ai-quota (balance never
#             exhausted), both in Redis: a Lua script to admit, one to settle,
#             per request; the agent sends the ones of a loop iteration in one
#             batch script call (agent/store_redis.c)
#   plain     no plugin ("governance off"): authenticated and metered only --
#             but the agent still reserves the request (a reservation of
#             nothing) and settles it, in Redis when Redis is the store
#             (exactly-once settlement), so this is not "no Redis": the Redis
#             columns of the table show it
# wrk POSTs the same small chat request (max_tokens 5) to each, interleaved
# rounds (plain, governed, plain, ...), and the script prints requests/s,
# p50/p99 and the ratio governed/plain (median of the per-round ratios;
# target >= 0.8). Any non-2xx answer (429, 403, 503 ...) or socket error is a
# measurement error: a refused request would be a fast one.
#
# Exit status: 0 if every measurement ran cleanly (a ratio below target prints
# MISS, and fails only with BENCH_STRICT=1); 1 otherwise (logs printed, temp
# dir kept). Every process started here is stopped on exit, by its pid.
#
# Environment (defaults): BUILD (build), HAPROXY (/usr/sbin/haproxy),
# REDIS_SERVER (redis-server), GOV_SECS (3), GOV_ROUNDS (3), GOV_CONNS (50),
# WRK_THREADS (2), HAPROXY_THREADS (2), LOG_LEVEL (warn: the agent's per-request
# usage lines are info), STORE_TIMEOUT_MS (250: the store's per-call deadline;
# the product default, 50, trips the circuit breaker when this 2-CPU machine is
# saturated by wrk, and failure_mode closed then answers 503: a measurement
# error here), BENCH_STRICT (0), KEEP (1: keep the temp dir).
#
# Besides wrk's numbers the table shows Redis's side, from INFO commandstats
# reset before each run: EVALSHA calls per request (admissions, settlements
# from the SPOP response and duplicates from HAProxy's record, batched: below 1
# under load), the Redis commands those scripts ran per request (each
# redis.call, counted by Redis: the number that does not depend on the
# machine) and the microseconds Redis spent in the scripts per request -- on
# a shared Redis that is the ceiling of all the gateways together.
set -u
cd "$(dirname "$0")/../.." || exit 2

BUILD=${BUILD:-build}
AGENT=$BUILD/tollgate
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
GOV_SECS=${GOV_SECS:-3}
GOV_ROUNDS=${GOV_ROUNDS:-3}
GOV_CONNS=${GOV_CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
HAPROXY_THREADS=${HAPROXY_THREADS:-2}
LOG_LEVEL=${LOG_LEVEL:-warn}
STORE_TIMEOUT_MS=${STORE_TIMEOUT_MS:-250}
BENCH_STRICT=${BENCH_STRICT:-0}
TARGET_RATIO=0.8
HERE=tests/bench
QUOTA0=1000000000000000

failed=0
pids=()
say() { printf '%s\n' "$*"; }
err() { printf 'governance bench: ERROR: %s\n' "$*" >&2; failed=1; }
die() { printf 'governance bench: FATAL: %s\n' "$*" >&2; failed=1; exit 1; }

tmp=$(mktemp -d /tmp/tollgate-govbench.XXXXXX) || exit 2

show_log() { # $1 = file, $2 = label
	[ -s "$1" ] || return 0
	printf -- '--- %s (last 30 lines of %s) ---\n' "$2" "$1" >&2
	tail -n 30 "$1" | sed 's/^/  | /' >&2
}

cleanup() {
	local p i alive
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for i in $(seq 1 30); do
		alive=0
		for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ "$alive" -eq 0 ] && break
		sleep 0.1
	done
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	if [ "$failed" -ne 0 ]; then
		show_log "$tmp/agent.log" agent
		show_log "$tmp/haproxy.log" haproxy
		show_log "$tmp/redis.log" redis
	fi
	if [ "${KEEP:-0}" = 1 ] || [ "$failed" -ne 0 ]; then
		say "governance bench: files kept in $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'failed=1; exit 130' INT TERM

# ---- prerequisites ------------------------------------------------------------
[ -x "$AGENT" ] || die "$AGENT not built (make BUILD=$BUILD)"
[ -x "$HAPROXY" ] || die "$HAPROXY not found"
for c in wrk curl python3 "$REDIS_SERVER"; do
	command -v "$c" >/dev/null || die "$c not installed"
done

read -r FE_PORT SPOP_PORT HTTP_PORT SETTLE_PORT REDIS_PORT <<<"$(python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
[ -n "${REDIS_PORT:-}" ] || die "could not find free ports"

redis() { # one command over RESP, the reply on stdout (no redis-cli needed)
	python3 - "$REDIS_PORT" "$@" <<'EOF'
import socket, sys
port, args = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port), timeout=2)
s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
f = s.makefile("rb")
line = f.readline()
if line[:1] == b"$":
    n = int(line[1:])
    print("" if n < 0 else f.read(n).decode())
elif line[:1] == b"-":
    sys.exit("redis error: " + line[1:].decode().strip())
else:
    print(line[1:].decode().strip())
EOF
}

wait_until() { # $1 = what, $2 = tries (0.1 s each), rest = command
	local what=$1 tries=$2 i
	shift 2
	for i in $(seq 1 "$tries"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "$what not ready after $((tries / 10)) s"
}

# ---- redis, the agent, haproxy --------------------------------------------------
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
	--dir "$tmp" --logfile "$tmp/redis.log" >/dev/null 2>&1 &
REDIS_PID=$!
pids+=("$REDIS_PID")
wait_until "redis-server" 100 redis PING

mkdir -p "$tmp/state" "$tmp/rendered"
sed -e "s#@FE_PORT@#$FE_PORT#g" -e "s#@SPOP_PORT@#$SPOP_PORT#g" \
    -e "s#@HTTP_PORT@#$HTTP_PORT#g" -e "s#@SETTLE_PORT@#$SETTLE_PORT#g" \
    -e "s#@REDIS_PORT@#$REDIS_PORT#g" -e "s#@STATE_DIR@#$tmp/state#g" \
    -e "s#@HAPROXY_THREADS@#$HAPROXY_THREADS#g" -e "s#@LOG_LEVEL@#$LOG_LEVEL#g" \
    -e "s#@STORE_TIMEOUT_MS@#$STORE_TIMEOUT_MS#g" \
    "$HERE/governance.yaml" >"$tmp/tollgate.yaml"
"$AGENT" check --config "$tmp/tollgate.yaml" >"$tmp/check.log" 2>&1 \
	|| { show_log "$tmp/check.log" "tollgate check"; die "tollgate check refused $tmp/tollgate.yaml"; }
"$AGENT" haproxy-config --config "$tmp/tollgate.yaml" --out "$tmp/rendered" >"$tmp/render.log" 2>&1 \
	|| { show_log "$tmp/render.log" "tollgate haproxy-config"; die "tollgate haproxy-config failed"; }
"$HAPROXY" -c -f "$tmp/rendered/haproxy.cfg" >"$tmp/haproxy-check.log" 2>&1 \
	|| { show_log "$tmp/haproxy-check.log" "haproxy -c"; die "haproxy refused the rendered configuration"; }

"$AGENT" --config "$tmp/tollgate.yaml" >"$tmp/agent.log" 2>&1 &
AGENT_PID=$!
pids+=("$AGENT_PID")
wait_until "the agent" 100 curl -sf "http://127.0.0.1:$HTTP_PORT/healthz"
(cd "$tmp/rendered" && exec "$HAPROXY" -f haproxy.cfg -db) >"$tmp/haproxy.log" 2>&1 &
HAPROXY_PID=$!
pids+=("$HAPROXY_PID")
wait_until "haproxy" 100 curl -s -o /dev/null "http://127.0.0.1:$FE_PORT/"

# the quota: a balance nobody exhausts, written through the agent's JSON admin API
curl -sf -X POST -H 'Content-Type: application/json' \
	-d "{\"consumer\":\"bench-user\",\"quota\":$QUOTA0}" \
	"http://127.0.0.1:$HTTP_PORT/v1/quota/refresh" >"$tmp/refresh.log" 2>&1 \
	|| { show_log "$tmp/refresh.log" refresh; die "quota refresh through the agent failed"; }
[ "$(redis GET bench_quota:bench-user)" = "$QUOTA0" ] || die "the quota is not in Redis at bench_quota:bench-user"

body() { # $1 = model
	printf '{"model":"%s","messages":[{"role":"user","content":"Say hello to the benchmark, briefly."}],"max_tokens":5}' "$1"
}
for route in governed plain; do
	model=gov-bench; [ "$route" = plain ] && model=plain-bench
	cat >"$tmp/$route.lua" <<EOF
wrk.method = "POST"
wrk.body = '$(body "$model")'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "bench-user-key"
EOF
done

# one request per route, checked, before measuring
for route in governed plain; do
	model=gov-bench; [ "$route" = plain ] && model=plain-bench
	code=$(curl -s -o "$tmp/probe-$route.body" -D "$tmp/probe-$route.hdr" -w '%{http_code}' \
		-H 'Content-Type: application/json' -H 'x-api-key: bench-user-key' \
		-d "$(body "$model")" "http://127.0.0.1:$FE_PORT/v1/chat/completions")
	[ "$code" = 200 ] || { show_log "$tmp/probe-$route.body" "$route answer"; die "$route: status $code"; }
	grep -q '"usage"' "$tmp/probe-$route.body" || die "$route: no usage in the answer"
done
grep -qi '^x-ratelimit-limit-tokens: 1000000000000' "$tmp/probe-governed.hdr" \
	|| { show_log "$tmp/probe-governed.hdr" "governed headers"; die "governed: no x-ratelimit-limit-tokens header: the rate limit did not apply"; }
if grep -qi '^x-ratelimit-limit-tokens' "$tmp/probe-plain.hdr"; then
	die "plain: x-ratelimit-* headers on the route without plugins"
fi
sleep 0.3
q_before=$(redis GET bench_quota:bench-user)
[ "$q_before" -lt "$QUOTA0" ] 2>/dev/null || die "the probe was not charged to the quota ($q_before)"

# ---- measuring ----------------------------------------------------------------
to_us() { # a wrk duration (812.00us, 1.23ms, 1.01s, 1.00m) -> microseconds
	awk -v d="$1" 'BEGIN {
		if (d ~ /us$/) { sub(/us$/, "", d); printf "%.0f", d }
		else if (d ~ /ms$/) { sub(/ms$/, "", d); printf "%.0f", d * 1000 }
		else if (d ~ /s$/) { sub(/s$/, "", d); printf "%.0f", d * 1000000 }
		else if (d ~ /m$/) { sub(/m$/, "", d); printf "%.0f", d * 60000000 }
		else print 0 }'
}
declare -A rps p50 p99 total non2xx ev_calls ev_usec ev_cmds cpu_h cpu_a cpu_r
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
run_wrk() { # $1 = route, $2 = round
	local log="$tmp/wrk-$1-$2.log" rc n s st c0 c1 p
	redis CONFIG RESETSTAT >/dev/null
	c0=(); for p in "$HAPROXY_PID" "$AGENT_PID" "$REDIS_PID"; do c0+=("$(cpu_ticks "$p")"); done
	wrk -t"$WRK_THREADS" -c"$GOV_CONNS" -d"${GOV_SECS}s" --latency -s "$tmp/$1.lua" \
		"http://127.0.0.1:$FE_PORT/v1/chat/completions" >"$log" 2>&1
	rc=$?
	c1=(); for p in "$HAPROXY_PID" "$AGENT_PID" "$REDIS_PID"; do c1+=("$(cpu_ticks "$p")"); done
	cpu_h[$1]=$(( ${cpu_h[$1]:-0} + c1[0] - c0[0] ))
	cpu_a[$1]=$(( ${cpu_a[$1]:-0} + c1[1] - c0[1] ))
	cpu_r[$1]=$(( ${cpu_r[$1]:-0} + c1[2] - c0[2] ))
	n=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$log")
	s=$(sed -n 's/.*Socket errors: *\(.*\)/\1/p' "$log")
	rps[$1,$2]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$log")
	p50[$1,$2]=$(to_us "$(awk '$1 == "50%" {print $2}' "$log")")
	p99[$1,$2]=$(to_us "$(awk '$1 == "99%" {print $2}' "$log")")
	total[$1]=$(( ${total[$1]:-0} + $(awk '/requests in/ {print $1}' "$log") ))
	# Redis's side: script calls and the time Redis spent in them
	st=$(redis INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
	ev_calls[$1]=$(( ${ev_calls[$1]:-0} + ${st%% *} ))
	ev_usec[$1]=$(( ${ev_usec[$1]:-0} + ${st##* } ))
	# the commands the scripts ran (redis.call): every command counted but
	# the scripts themselves and this script's own INFO / CONFIG
	st=$(redis INFO commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ &&
		$1 !~ /^cmdstat_(evalsha|eval|info|config|script)$/ {n += $3} END {print n + 0}')
	ev_cmds[$1]=$(( ${ev_cmds[$1]:-0} + st ))
	non2xx[$1]=$(( ${non2xx[$1]:-0} + ${n:-0} ))
	say "   round $2 $1: ${rps[$1,$2]:-?} req/s, p50 ${p50[$1,$2]:-?} us, p99 ${p99[$1,$2]:-?} us${n:+, NON-2xx $n}${s:+, socket errors: $s}"
	if [ "$rc" -ne 0 ] || [ -n "$n" ] || [ -n "$s" ] || [ -z "${rps[$1,$2]}" ]; then
		err "wrk $1 (round $2): exit $rc, non-2xx ${n:-0}${s:+, socket errors: $s}"
		show_log "$log" wrk
	fi
	kill -0 "$AGENT_PID" 2>/dev/null || die "the agent died"
	kill -0 "$HAPROXY_PID" 2>/dev/null || die "haproxy died"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

say "== token governance cost: wrk -t$WRK_THREADS -c$GOV_CONNS POST /v1/chat/completions -> HAProxy (nbthread $HAPROXY_THREADS) + agent, provider mock"
say "   $GOV_ROUNDS interleaved rounds of ${GOV_SECS}s; governed = ai-token-ratelimit + ai-quota in Redis, plain = no plugin"
wrk -t1 -c"$GOV_CONNS" -d1s -s "$tmp/plain.lua" "http://127.0.0.1:$FE_PORT/v1/chat/completions" >/dev/null 2>&1
wrk -t1 -c"$GOV_CONNS" -d1s -s "$tmp/governed.lua" "http://127.0.0.1:$FE_PORT/v1/chat/completions" >/dev/null 2>&1
ratios=()
for r in $(seq 1 "$GOV_ROUNDS"); do
	run_wrk plain "$r"
	run_wrk governed "$r"
	if [ -n "${rps[plain,$r]}" ] && [ "${rps[plain,$r]}" -gt 0 ] 2>/dev/null; then
		ratios+=("$(awk -v g="${rps[governed,$r]:-0}" -v p="${rps[plain,$r]}" 'BEGIN {printf "%.3f", g / p}')")
	fi
done

# governance really happened: every governed request was charged in Redis
sleep 0.5
q_after=$(redis GET bench_quota:bench-user)
charged=$(( q_before - q_after ))
[ "$charged" -gt 0 ] 2>/dev/null || err "the governed requests charged nothing to the quota (before $q_before, after $q_after)"
admitted=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" \
	| awk '/^tollgate_limit_decisions_total\{/ && /rule="bench_rule"/ && /outcome="admitted"/ {s += $NF} END {printf "%.0f", s}')

decisions=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" \
	| awk '/^tollgate_requests_total\{/ && $NF > 0 {
		r = $0; sub(/.*route="/, "", r); sub(/".*/, "", r)
		d = $0; sub(/.*decision="/, "", d); sub(/".*/, "", d)
		s = $0; sub(/.*status="/, "", s); sub(/".*/, "", s)
		printf "%s%s %s %s: %.0f", sep, r, d, s, $NF; sep = "; " }')
breaker_log=$(grep -c 'circuit breaker open' "$tmp/agent.log")

for k in plain governed; do
	vals=(); v50=(); v99=()
	for r in $(seq 1 "$GOV_ROUNDS"); do
		vals+=("${rps[$k,$r]:-0}"); v50+=("${p50[$k,$r]:-0}"); v99+=("${p99[$k,$r]:-0}")
	done
	declare "med_rps_$k=$(median "${vals[@]}")" "med_p50_$k=$(median "${v50[@]}")" \
	        "med_p99_$k=$(median "${v99[@]}")"
done
ratio=$(median "${ratios[@]:-0}")
cpu_req() { # $1 = route, $2 = ticks: CPU µs per request
	awk -v t="$2" -v hz="$TICK" -v n="${total[$1]:-0}" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "n/a" }'
}
per_req() { # $1 = route, $2 = calls|usec|cmds: EVALSHA per request, Redis µs in them, commands they ran
	local v=${ev_calls[$1]:-0}
	[ "$2" = usec ] && v=${ev_usec[$1]:-0}
	[ "$2" = cmds ] && v=${ev_cmds[$1]:-0}
	awk -v v="$v" -v n="${total[$1]:-0}" 'BEGIN { if (n > 0) printf "%.1f", v / n; else print "n/a" }'
}
verdict=$(awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN {print (r >= t) ? "ok" : "MISS"}')

cat <<EOF

### Token governance cost (wrk -t$WRK_THREADS -c$GOV_CONNS, ${GOV_SECS}s x $GOV_ROUNDS interleaved rounds, medians)

| route | plugins | requests/s | p50 µs | p99 µs | requests (all rounds) | non-2xx | Redis scripts / request | Redis commands / request (in the scripts) | Redis µs / request |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
| plain | none (auth + metering) | ${med_rps_plain} | ${med_p50_plain} | ${med_p99_plain} | ${total[plain]:-0} | ${non2xx[plain]:-0} | $(per_req plain calls) | $(per_req plain cmds) | $(per_req plain usec) |
| governed | ai-token-ratelimit + ai-quota (Redis) | ${med_rps_governed} | ${med_p50_governed} | ${med_p99_governed} | ${total[governed]:-0} | ${non2xx[governed]:-0} | $(per_req governed calls) | $(per_req governed cmds) | $(per_req governed usec) |

CPU µs per request (utime + stime over all rounds / requests):

| route | HAProxy | agent | redis-server |
|---|---:|---:|---:|
| plain | $(cpu_req plain "${cpu_h[plain]:-0}") | $(cpu_req plain "${cpu_a[plain]:-0}") | $(cpu_req plain "${cpu_r[plain]:-0}") |
| governed | $(cpu_req governed "${cpu_h[governed]:-0}") | $(cpu_req governed "${cpu_a[governed]:-0}") | $(cpu_req governed "${cpu_r[governed]:-0}") |

ratio governed/plain (median of per-round ratios ${ratios[*]:-none}): **${ratio}** (target >= ${TARGET_RATIO}: ${verdict})
quota charged during the run: ${charged} tokens; rate-limit admissions counted by the agent: ${admitted}
agent decisions (route decision status: count): ${decisions}
store deadline ${STORE_TIMEOUT_MS} ms; Redis circuit breaker opened ${breaker_log} time(s)
EOF

if [ "$verdict" = MISS ] && [ "$BENCH_STRICT" = 1 ]; then
	failed=1
fi
[ "$failed" -eq 0 ]
