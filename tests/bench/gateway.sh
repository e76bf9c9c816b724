#!/bin/sh
# tests/bench/gateway.sh -- the metering gateway against HAProxy alone, side
# by side in one run (part of `make bench`).
#
#   alone      wrk -> HAProxy -> upstream
#   gateway    wrk -> HAProxy (rendered by `tollgate haproxy-config`) + agent:
#              key-auth, routing, metering, exactly-once settlement
#   governed   the same + ai-quota and ai-token-ratelimit on the embedded
#              store (limits high enough that nothing is refused)
#
# The upstream is an HAProxy `http-request return` answering a chat
# completion with usage, so neither side waits on a slow mock. Rounds
# alternate the three setups (this machine is shared); medians are
# reported. Targets: gateway >= 0.6x alone, p99 added <= 1 ms.
#   DURATION=5 ROUNDS=3 CONNS=50 tests/bench/gateway.sh
set -eu
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
W=$(mktemp -d /tmp/tg-bench-gw-XXXXXX)
PIDS=""
cleanup() {
	for p in $PIDS; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT INT TERM
[ -n "${KEEP:-}" ] && trap - EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
	for _ in $(seq 1 100); do
		python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
		sleep 0.05
	done
	echo "port $1 never opened" >&2; return 1
}

UP=$(port); ALONE=$(port)
cat > "$W/upstream.cfg" <<EOF
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend upstream
    bind 127.0.0.1:$UP
    http-request return status 200 content-type application/json string "{\"id\":\"b\",\"object\":\"chat.completion\",\"model\":\"bench-1\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10}}"
frontend alone
    bind 127.0.0.1:$ALONE
    option http-buffer-request
    default_backend up
backend up
    server u 127.0.0.1:$UP
EOF
haproxy -f "$W/upstream.cfg" -db >"$W/upstream.log" 2>&1 &
PIDS="$PIDS $!"

# gateway <name> <plugins yaml>: render and start one HAProxy + agent pair
gateway() {
	name=$1; plugins=$2
	gp=$(port); sp=$(port); hp=$(port); st=$(port)
	mkdir -p "$W/$name"
	cat > "$W/$name/tollgate.yaml" <<EOF
haproxy: { listen: "127.0.0.1:$gp" }
agent:
  listen: "127.0.0.1:$sp"
  http: "127.0.0.1:$hp"
  settle: "127.0.0.1:$st"
  state_dir: "$W/$name/state"
  log_level: warn
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
	haproxy -f "$W/$name/hap/haproxy.cfg" -db >"$W/$name/haproxy.log" 2>&1 &
	PIDS="$PIDS $!"
	wait_port "$sp"; wait_port "$gp"
	eval "PORT_$name=$gp"
}

gateway gateway ""
gateway governed "    plugins:
      ai-quota: { redis_key_prefix: 'chat_quota:', admin_consumer: admin, admin_path: /quota }
      ai-token-ratelimit:
        rule_name: bench
        rule_items:
          - limit_by_per_header: x-api-key
            limit_keys: [{ key: '*', token_per_minute: 1000000000 }]"
wait_port "$UP"; wait_port "$ALONE"
curl -sf "http://127.0.0.1:$PORT_governed/v1/chat/completions/quota/refresh" \
	-H 'x-api-key: admin-key' -H 'x-higress-llm-model: bench-1' \
	-d 'consumer=bench&quota=1000000000000' >/dev/null

cat > "$W/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"bench-1","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "bench-key"
EOF

# run <port>: prints "rps p50_us p99_us non2xx"
run() {
	out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s "$W/post.lua" "http://127.0.0.1:$1/v1/chat/completions" 2>&1)
	echo "$out" | awk '
	function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1e6; return v }
	/Requests\/sec/ { rps=$2 }
	/^ +50%/ { p50=us($2) }
	/^ +99%/ { p99=us($2) }
	/Non-2xx/ { bad=$5 }
	END { printf "%d %d %d %d\n", rps, p50, p99, bad+0 }'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for r in $(seq 1 "$ROUNDS"); do
	for s in alone gateway governed; do
		case $s in alone) p=$ALONE ;; gateway) p=$PORT_gateway ;; governed) p=$PORT_governed ;; esac
		run "$p" >> "$W/$s.res"
	done
done

printf '\n| setup | requests/s | p50 µs | p99 µs | non-2xx |\n|---|---|---|---|---|\n'
for s in alone gateway governed; do
	rps=$(cut -d' ' -f1 "$W/$s.res" | median)
	p50=$(cut -d' ' -f2 "$W/$s.res" | median)
	p99=$(cut -d' ' -f3 "$W/$s.res" | median)
	bad=$(awk '{t+=$4} END {print t+0}' "$W/$s.res")
	printf '| %s | %s | %s | %s | %s |\n' "$s" "$rps" "$p50" "$p99" "$bad"
	eval "RPS_$s=$rps; P99_$s=$p99; BAD_$s=$bad"
done
awk -v a="$RPS_alone" -v g="$RPS_gateway" -v v="$RPS_governed" \
    -v pa="$P99_alone" -v pg="$P99_gateway" 'BEGIN {
	printf "\ngateway / alone = %.2fx (target >= 0.6x): %s\n", g/a, (g/a >= 0.6 ? "PASS" : "MISS")
	printf "governed / gateway = %.2fx (target >= 0.8x): %s\n", v/g, (v/g >= 0.8 ? "PASS" : "MISS")
	printf "p99 added by the gateway = %d us (target <= 1000 us): %s\n", pg-pa, (pg-pa <= 1000 ? "PASS" : "MISS")
}'
# every request was answered 200: a silent failure is never a fast run
[ "$BAD_gateway" -eq 0 ] && [ "$BAD_governed" -eq 0 ] && [ "$BAD_alone" -eq 0 ]
