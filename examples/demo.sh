#!/bin/sh
# examples/demo.sh -- the README's first command (`make demo`): HAProxy and the
# tollgate agent on the embedded store, with the built-in mock provider, ready
# for the walkthrough's curl calls. Ctrl-C stops both.
#
#   CONFIG=...            another configuration (default examples/token-control.yaml)
#   TOLLGATE_STATE_DIR    where the embedded store and the rendered HAProxy files live
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
CONFIG=${CONFIG:-examples/token-control.yaml}
export TOLLGATE_STATE_DIR=${TOLLGATE_STATE_DIR:-$PWD/state}
OUT=$TOLLGATE_STATE_DIR/haproxy
mkdir -p "$OUT"

"$BUILD/tollgate" check --config "$CONFIG"
"$BUILD/tollgate" haproxy-config --config "$CONFIG" --out "$OUT"
haproxy -c -q -f "$OUT/haproxy.cfg"

"$BUILD/tollgate" --config "$CONFIG" &
AGENT=$!
# 4 MiB request buffers: glibc must keep them in its heap (haproxy/README.md;
# on 2.6 the rendered file checks for this exact value, else it takes bodies
# up to 117760 bytes; 2.8+ also caches them itself, tune.memory.hot-size)
TUNABLES=$("$BUILD/tollgate" glibc-tunables "$(haproxy -v | awk 'NR == 1 {print $3}')")
GLIBC_TUNABLES=$TUNABLES haproxy -f "$OUT/haproxy.cfg" -db &
HAP=$!
trap 'kill $HAP $AGENT 2>/dev/null; wait 2>/dev/null' EXIT INT TERM

for i in $(seq 1 50); do
	curl -s -o /dev/null http://127.0.0.1:${TOLLGATE_PORT:-8080}/ && break
	sleep 0.1
done
A=${ADMIN_KEY:-admin-key-123}
U=${USER1_KEY:-user1-key-123}
P=${TOLLGATE_PORT:-8080}
cat <<EOT

Tollgate demo: HAProxy on :$P, agent dashboard and /metrics on http://127.0.0.1:8001/

  # query aliyun-user1's quota (as aliyun-admin)
  curl 'http://localhost:$P/v1/chat/completions/quota?consumer=aliyun-user1' -H 'x-api-key: $A' -H 'x-higress-llm-model: qwen-max'
  # set it to 100
  curl 'http://localhost:$P/v1/chat/completions/quota/refresh' -d 'consumer=aliyun-user1&quota=100' -H 'x-api-key: $A' -H 'x-higress-llm-model: qwen-max'
  # add 100
  curl 'http://localhost:$P/v1/chat/completions/quota/delta' -d 'consumer=aliyun-user1&value=100' -H 'x-api-key: $A' -H 'x-higress-llm-model: qwen-max'
  # chat as aliyun-user1 (5 tokens per minute: the second call within a minute gets 429)
  curl 'http://localhost:$P/v1/chat/completions' -H 'x-api-key: $U' -H 'Content-Type: application/json' -d '{"model":"qwen-max","messages":[{"role":"user","content":"你是谁"}]}'
  # token metrics
  curl -s http://127.0.0.1:8001/metrics | grep tollgate_tokens_total

Ctrl-C stops the demo.
EOT
wait
