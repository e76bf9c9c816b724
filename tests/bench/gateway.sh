#!/bin/sh
# tests/bench/gateway.sh -- the metering gateway against HAProxy alone, side
# by side in one run (part of `make bench`).
#
#   alone      wrk -> HAProxy -> upstream
#   spoe       wrk -> HAProxy + one SPOE exchange per request (the request
#              message's arguments, body and headers included, answered by
#              the agent's tollgate-echo with one variable): the floor that
#              HAProxy's SPOE sets, before any gateway work
#   spoe2      the same + a response exchange with the body, as the gateway
#              does for JSON answers: the floor of the gateway's design
#   gateway    wrk -> HAProxy (rendered by `tollgate haproxy-config`) + agent:
#              key-auth, routing, metering, exactly-once settlement
#   governed   the same + ai-quota and ai-token-ratelimit on the embedded
#              store (limits high enough that nothing is refused)
#
# The upstream is an HAProxy `http-request return` answering a chat
# completion with usage, in a process of its own, shared by all five. Two
# loads: CONNS connections flat out (requests/s, and latency under
# saturation: queueing), then one connection (the latency each request
# pays). Rounds alternate the setups (this machine is shared); medians are
# reported. CPU per request (µs, from /proc) shows who spends it.
# Then, paced (tests/bench/http-pace.c), alone and the gateway at half of
# alone's maximum and at half of the gateway's: the p99 a request pays at a
# given load. Targets: gateway >= 0.6x alone and >= 0.9x its floor (spoe2),
# p99 added <= 1 ms at one connection and at half of alone's maximum.
# The floors use the agent backend and buffer tuning the renderer writes for
# this HAProxy; HAProxy alone has nbthread = cores and http-reuse always.
#   DURATION=5 ROUNDS=3 CONNS=50 HAPROXY=/path/to/haproxy tests/bench/gateway.sh
# MAX_BODY sets the gateways' haproxy.max_body (default: the YAML's default);
# SETUPS runs a subset (all five are started). SUMMARY=file appends this
# version's row to a table of every version (`make bench` prints it).
set -eu
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
HAPROXY=${HAPROXY:-haproxy}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
# every HAProxy here runs with the glibc setting haproxy/README.md advises
# for its version (unless GLIBC_TUNABLES is given): the 4 MiB buffers cheap
: "${GLIBC_TUNABLES=$("$BUILD/tollgate" glibc-tunables "$("$HAPROXY" -v | awk 'NR == 1 {print $3}')")}"
export GLIBC_TUNABLES
W=$(mktemp -d /tmp/tg-bench-gw-XXXXXX)
PIDS=""
cleanup() {
	for p in $PIDS; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT INT TERM
[ -n "${KEEP:-}" ] && trap - EXIT

# port: a free loopback port, never one handed out before in this run (the
# ports are not held until their server binds them)
port() {
	while :; do
		p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
		grep -qx "$p" "$W/ports" 2>/dev/null || break
	done
	echo "$p" >> "$W/ports"; echo "$p"
}
wait_port() {
	for _ in $(seq 1 100); do
		python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "port $1 never opened" >&2; return 1
}

# start_haproxy <name> [global line...] < proxies: $W/<name>.cfg is the
# shared global and defaults sections, then the proxies read from stdin;
# HAProxy starts on it and PID_<name> is its pid.
start_haproxy() {
	name=$1; shift
	{
		printf 'global\n    maxconn 4096\n'
		for line in "$@"; do printf '    %s\n' "$line"; done
		printf 'defaults\n    mode http\n    timeout connect 5s\n'
		printf '    timeout client 30s\n    timeout server 30s\n'
		cat
	} > "$W/$name.cfg"
	"$HAPROXY" -f "$W/$name.cfg" -db >"$W/$name.log" 2>&1 &
	PIDS="$PIDS $!"
	eval "PID_$name=$!"
}

UP=$(port); ALONE=$(port); SPOE=$(port)
start_haproxy upstream <<EOF
frontend upstream
    bind 127.0.0.1:$UP
    http-request return status 200 content-type application/json string "{\"id\":\"b\",\"object\":\"chat.completion\",\"model\":\"bench-1\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}"
EOF
# HAProxy alone, tuned as an operator would: a thread per core, and
# connections to the upstream reused whatever the request
start_haproxy alone "nbthread $(nproc)" <<EOF
frontend alone
    bind 127.0.0.1:$ALONE
    option http-buffer-request
    default_backend up
backend up
    http-reuse always
    server u 127.0.0.1:$UP
EOF

# gateway <name> <plugins yaml>: render and start one HAProxy + agent pair
gateway() {
	name=$1; plugins=$2
	gp=$(port); sp=$(port); hp=$(port); st=$(port)
	mkdir -p "$W/$name"
	cat > "$W/$name/tollgate.yaml" <<EOF
haproxy: { listen: "127.0.0.1:$gp"${MAX_BODY:+, max_body: $MAX_BODY} }
agent:
  listen: "127.0.0.1:$sp"
  http: "127.0.0.1:$hp"
  settle: "127.0.0.1:$st"
  state_dir: "$W/$name/state"
  log_level: warn
  debug_messages: true    # tollgate-echo, for the spoe setup
providers:
  - { name: up, type: openai-compatible, base_url: "http://127.0.0.1:$UP/v1", api_keys: [pk] }
consumers:
  - { name: admin, credential: admin-key }
  - { name: bench, credential: bench-key }
key_auth: { keys: [x-api-key] }
routes:
  - name: bench
    provider: up
    models: ["bench-*"]
    auth: { enabled: true, allow: [admin, bench] }
$plugins
EOF
	"$BUILD/tollgate" haproxy-config --config "$W/$name/tollgate.yaml" --out "$W/$name/hap" >/dev/null
	"$BUILD/tollgate" --config "$W/$name/tollgate.yaml" >"$W/$name/agent.log" 2>&1 &
	PIDS="$PIDS $!"
	eval "AGENT_$name=$!"
	"$HAPROXY" -f "$W/$name/hap/haproxy.cfg" -db >"$W/$name/haproxy.log" 2>&1 &
	PIDS="$PIDS $!"
	eval "PID_$name=$!"
	wait_port "$sp"; wait_port "$gp"
	eval "PORT_$name=$gp SPOP_$name=$sp"
}

gateway gateway ""
gateway governed "    plugins:
      ai-quota: { redis_key_prefix: 'chat_quota:', admin_consumer: admin, admin_path: /quota }
      ai-token-ratelimit:
        rule_name: bench
        rule_items:
          - limit_by_per_header: x-api-key
            limit_keys: [{ key: '*', token_per_minute: 1000000000 }]"
# The SPOE floors: HAProxy exchanging frames with the gateway's agent and
# doing nothing else. spoe: the request message (answered by tollgate-echo);
# spoe2: plus a response message with the body after wait-for-body, as the
# gateway sends (the agent ACKs an unknown message with no action; a failed
# exchange turns into 502, so it cannot pass for a fast one).
# spoe_floor <name> <port> <2 for the response exchange too>
spoe_floor() {
	cat > "$W/$1.conf" <<EOF
[tollgate]
spoe-agent tollgate
    messages tollgate-echo
$( [ "$3" = 2 ] && echo "    groups resp" )
    option var-prefix tg
    option set-on-error err
    option pipelining
.if !version_atleast(3.1)
    no option async
    no option send-frag-payload
    option dontlog-normal
    timeout hello 2s
    timeout idle 30s
.endif
    timeout processing 1s
    use-backend agents
spoe-message tollgate-echo
    args ok=int(1) method=method path=path query=query hdrs=req.hdrs_bin body=req.body ip=src
    event on-frontend-http-request
EOF
	[ "$3" = 2 ] && cat >> "$W/$1.conf" <<EOF
spoe-message resp-echo
    args status=status body=res.body
spoe-group resp
    messages resp-echo
EOF
	# the gateway's own buffer tuning and agent backend, as rendered for
	# this HAProxy (mode spop on 3.1+): the floor is the gateway's floor
	# (from the sizes' setenv block up to the Lua lines)
	tunes=$(awk '/request bodies are buffered whole/ {p = 1} /lua-load/ {p = 0} p' \
		"$W/gateway/hap/haproxy.cfg")
	start_haproxy "$1" "$tunes" <<EOF
frontend $1
    bind 127.0.0.1:$2
    option http-buffer-request
    filter spoe engine tollgate config $W/$1.conf
    http-request return status 503 if !{ var(txn.tg.ok) -m found }
$( [ "$3" = 2 ] && printf '%s\n' "    http-response wait-for-body time 30s" \
	"    http-response send-spoe-group tollgate resp" \
	"    http-response set-status 502 if { var(txn.tg.err) -m found }" )
    default_backend up
backend up
    server u 127.0.0.1:$UP
$(sed -n '/^backend tollgate_agents$/,/^$/p' "$W/gateway/hap/haproxy.cfg" |
	sed 's/^backend tollgate_agents$/backend agents/')
EOF
	eval "AGENT_$1=$AGENT_gateway PORT_$1=$2"
}
SPOE2=$(port)
spoe_floor spoe "$SPOE" 1
spoe_floor spoe2 "$SPOE2" 2
wait_port "$UP"; wait_port "$ALONE"; wait_port "$SPOE"; wait_port "$SPOE2"
curl -sf "http://127.0.0.1:$PORT_governed/v1/chat/completions/quota/refresh" \
	-H 'x-api-key: admin-key' -H 'x-higress-llm-model: bench-1' \
	-d 'consumer=bench&quota=1000000000000' >/dev/null

cat > "$W/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"bench-1","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "bench-key"
EOF

ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run <setup> <conns>: prints "rps p50_us p99_us non2xx haproxy_us agent_us"
# (CPU µs per request of the setup's HAProxy and agent)
run() {
	eval "port=\$PORT_$1 hp=\$PID_$1 ap=\${AGENT_$1:-}"
	h0=$(ticks "$hp"); a0=$(ticks "$ap")
	t=2; [ "$2" -lt 2 ] && t=1
	out=$(wrk -t"$t" -c"$2" -d"${DURATION}s" --latency -s "$W/post.lua" "http://127.0.0.1:$port/v1/chat/completions" 2>&1)
	h1=$(ticks "$hp"); a1=$(ticks "$ap")
	echo "$out" | awk -v h=$((h1 - h0)) -v a=$((a1 - a0)) -v hz="$(getconf CLK_TCK)" '
	function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1e6; return v }
	/requests in/ { n=$1 }
	/Requests\/sec/ { rps=$2 }
	/^ +50%/ { p50=us($2) }
	/^ +99%/ { p99=us($2) }
	/Non-2xx/ { bad=$5 }
	END { printf "%d %d %d %d %.0f %.0f\n", rps, p50, p99, bad+0, n ? h*1e6/hz/n : 0, n ? a*1e6/hz/n : 0 }'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { cut -d' ' -f"$2" "$W/$1" | median; }

PORT_alone=$ALONE
for s in alone spoe spoe2 gateway governed; do
	eval "RPS_$s=0 P99_$s=0 BAD_$s=0 ONE50_$s=0 ONE99_$s=0"
done
SETUPS=${SETUPS:-alone spoe spoe2 gateway governed}
for r in $(seq 1 "$ROUNDS"); do
	for s in $SETUPS; do
		run "$s" "$CONNS" >> "$W/$s.sat"
		run "$s" 1 >> "$W/$s.one"
	done
done

printf '\nHAProxy %s (%s), GLIBC_TUNABLES=%s\n' "$("$HAPROXY" -v | awk 'NR == 1 {print $3}')" "$HAPROXY" "$GLIBC_TUNABLES"
printf '\n%s connections, flat out (medians of %s rounds of %ss)\n\n' "$CONNS" "$ROUNDS" "$DURATION"
printf '| setup | requests/s | p50 µs | p99 µs | non-2xx | HAProxy CPU µs/req | agent CPU µs/req |\n|---|---|---|---|---|---|---|\n'
for s in $SETUPS; do
	bad=$(awk '{t+=$4} END {print t+0}' "$W/$s.sat" "$W/$s.one")
	printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$(col $s.sat 1)" "$(col $s.sat 2)" \
		"$(col $s.sat 3)" "$bad" "$(col $s.sat 5)" "$(col $s.sat 6)"
	eval "RPS_$s=$(col $s.sat 1) P99_$s=$(col $s.sat 3) BAD_$s=$bad"
	eval "ONE50_$s=$(col $s.one 2) ONE99_$s=$(col $s.one 3)"
done
printf '\none connection (the latency a request pays)\n\n| setup | p50 µs | p99 µs |\n|---|---|---|\n'
for s in $SETUPS; do
	eval "printf '| %s | %s | %s |\n' $s \$ONE50_$s \$ONE99_$s"
done
# Paced, not flat out (wrk finds maximums): alone and the gateway at half of
# HAProxy alone's maximum (the target: p99 added <= 1 ms), then at half of
# the gateway's own. Latency counts from when each request was due
# (tests/bench/http-pace.c; 1000000 µs reads "a second or more"), so a
# setup that cannot keep the rate shows it.
# pace <label> <what> <rate>: PACE99_<label>_alone, PACE99_<label>_gateway
pace() {
	printf '\npaced at %s: %s requests/s, %s connections (%ss)\n\n' "$2" "$3" "$CONNS" "$DURATION"
	printf '| setup | achieved requests/s | p50 µs | p99 µs | late (still waiting at the end) |\n|---|---|---|---|---|\n'
	for s in alone gateway; do
		eval "port=\$PORT_$s"
		out=$("$BUILD/http-pace" -p "$port" -r "$3" -c "$CONNS" -d "$DURATION" -w 1 \
			-u /v1/chat/completions -H 'Content-Type: application/json' -H 'x-api-key: bench-key' \
			-b '{"model":"bench-1","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}') || {
			echo "http-pace failed on $s: $out" >&2; exit 1; }
		printf '| %s | %s | %s | %s | %s |\n' "$s" "$(pv achieved)" "$(pv p50)" "$(pv p99)" "$(pv late)"
		[ "$(pv non2xx)" = 0 ] || { echo "http-pace: non-2xx answers on $s: $out" >&2; exit 1; }
		eval "PACE99_$1_$s=$(pv p99)"
	done
}
pv() { echo "$out" | tr ' ' '\n' | sed -n "s/^$1=//p" | tr -d 'us/'; }
PACE_A=$((RPS_alone / 2)) PACE_G=$((RPS_gateway / 2))
PACE99_a_alone=0 PACE99_a_gateway=0 PACE99_g_alone=0 PACE99_g_gateway=0
if [ "$PACE_A" -gt 0 ] && [ "$PACE_G" -gt 0 ]; then
	pace a "half of HAProxy alone's maximum" "$PACE_A"
	pace g "half of the gateway's maximum" "$PACE_G"
fi
awk -v a="$RPS_alone" -v f="$RPS_spoe" -v f2="$RPS_spoe2" -v g="$RPS_gateway" -v v="$RPS_governed" \
    -v pa="$P99_alone" -v pg="$P99_gateway" -v oa="$ONE99_alone" -v og="$ONE99_gateway" \
    -v qa="$PACE99_a_alone" -v qg="$PACE99_a_gateway" -v qr="$PACE_A" \
    -v ra="$PACE99_g_alone" -v rg="$PACE99_g_gateway" -v rr="$PACE_G" \
    -v c="$CONNS" 'BEGIN {
	if (a == 0) a = -1; if (g == 0) g = -1   # a setup not run: its ratios read negative
	printf "\nspoe / alone = %.2fx (HAProxy with one SPOE exchange per request, no gateway work)\n", f/a
	printf "spoe2 / alone = %.2fx (two exchanges, request and response, as the gateway: its floor)\n", f2/a
	printf "gateway / alone = %.2fx (target >= 0.6x): %s\n", g/a, (g/a >= 0.6 ? "PASS" : "MISS")
	printf "gateway / spoe2 = %.2fx (target >= 0.9x: its own work <= 10%% on its floor): %s\n", g/(f2 ? f2 : -1), (g/(f2 ? f2 : -1) >= 0.9 ? "PASS" : "MISS")
	printf "governed / gateway = %.2fx (target >= 0.8x): %s\n", v/g, (v/g >= 0.8 ? "PASS" : "MISS")
	printf "p99 added by the gateway, one connection = %d us (target <= 1000 us): %s\n", og-oa, (og-oa <= 1000 ? "PASS" : "MISS")
	if (qr > 0 && qg > 0)
		printf "p99 added by the gateway at half of alone'"'"'s maximum (%d requests/s) = %d us (target <= 1000 us): %s\n", qr, qg-qa, (qg-qa <= 1000 ? "PASS" : "MISS")
	if (rr > 0 && rg > 0)
		printf "p99 added by the gateway at half of its own maximum (%d requests/s) = %d us\n", rr, rg-ra
	printf "p99 added by the gateway, %d connections flat out = %d us (queueing: see requests/s)\n", c, pg-pa
}'
# SUMMARY=file: one row for this HAProxy in a table of every version (make
# bench prints it at the end), its header first when the file is new
if [ -n "${SUMMARY:-}" ]; then
	[ -s "$SUMMARY" ] || printf '%s\n%s\n' \
		"| HAProxy | requests/s alone, spoe2, gateway, governed | gateway / alone | gateway / spoe2 | governed / gateway | HAProxy CPU µs/req alone, spoe, spoe2, gateway | agent CPU µs/req gateway | p99 added, one connection | p99 added at half of alone's maximum, of the gateway's |" \
		"|---|---|---|---|---|---|---|---|---|" > "$SUMMARY"
	awk -v v="$("$HAPROXY" -v | awk 'NR == 1 {print $3}')" -v a="$RPS_alone" -v f2="$RPS_spoe2" \
	    -v g="$RPS_gateway" -v gv="$RPS_governed" -v ca="$(col alone.sat 5)" -v c1="$(col spoe.sat 5)" \
	    -v c2="$(col spoe2.sat 5)" -v cg="$(col gateway.sat 5)" -v ag="$(col gateway.sat 6)" \
	    -v p="$((ONE99_gateway - ONE99_alone))" -v q="$((PACE99_a_gateway - PACE99_a_alone))" \
	    -v q2="$((PACE99_g_gateway - PACE99_g_alone))" 'BEGIN {
		printf "| %s | %d, %d, %d, %d | %.2fx | %.2fx | %.2fx | %s, %s, %s, %s | %s | %d µs | %d µs, %d µs |\n", v, a, f2, g, gv,
		       g/(a ? a : -1), g/(f2 ? f2 : -1), gv/(g ? g : -1), ca, c1, c2, cg, ag, p, q, q2
	}' >> "$SUMMARY"
fi
# every request was answered 200: a silent failure is never a fast run
[ "$BAD_gateway" -eq 0 ] && [ "$BAD_governed" -eq 0 ] && [ "$BAD_alone" -eq 0 ] && [ "$BAD_spoe" -eq 0 ] &&
	[ "$BAD_spoe2" -eq 0 ]
