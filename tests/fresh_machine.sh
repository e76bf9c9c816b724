#!/bin/sh
# tests/fresh_machine.sh -- the README's two commands on a fresh Debian 12.
#
# A clean clone of this repository's HEAD goes into a new debian:bookworm-slim
# container where only `make` is added; there `make test` must end with
# "N passed, 0 failed, N skipped" (tests/deps.sh installs everything else),
# and `make demo` must answer the walkthrough's first curl (aliyun-user1's
# quota, queried as aliyun-admin) with {"consumer":"aliyun-user1","quota":N}.
#
# Needs a Docker engine: one already running, or `dockerd` started here as
# root. No registry is reachable on these machines: without the image,
# debian:bookworm-slim is made with debootstrap from the machine's Debian
# mirror (docker import); tests/docker_lib.sh does both. Where it cannot
# run (no engine, no image and no debootstrap, no Debian mirror reachable
# from the container) it prints
# "SKIP" with the reason and exits 0: .ci/run says so and goes on. Once make
# is in the container, anything else is the project's: "FAIL:
# fresh_machine (why)", exit 1; else "PASS: fresh_machine".
set -u
cd "$(dirname "$0")/.." || exit 2
IMAGE=${FRESH_IMAGE:-debian:bookworm-slim}
work=$(mktemp -d /tmp/tg-fresh.XXXXXX)
name=tg-fresh-$$
say() { echo "fresh-machine: $*"; }
fail() { echo "FAIL: fresh_machine ($*)"; docker rm -f "$name" >/dev/null 2>&1; exit 1; }
cleanup() { docker rm -f "$name" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT

# the engine and the image: tests/docker_lib.sh (shared with make docker-test)
. tests/docker_lib.sh
docker_engine "$work" || { say "SKIP: $DOCKER_WHY"; exit 0; }
docker_base_image "$IMAGE" "$work" || { say "SKIP: $DOCKER_WHY"; exit 0; }

git clone -q . "$work/src" || fail "git clone"
# The network's own trust anchors (here a TLS-intercepting egress proxy's CA,
# in /usr/local/share/ca-certificates) are what any machine on this network
# has: npm (the OpenAI SDK test) gets them through NODE_EXTRA_CA_CERTS.
ca_args=""
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
	cat /usr/local/share/ca-certificates/*.crt >"$work/network-ca.crt"
	ca_args="-v $work/network-ca.crt:/etc/network-ca.crt:ro -e NODE_EXTRA_CA_CERTS=/etc/network-ca.crt"
fi
say "make test in a fresh $IMAGE (only make added)"
# shellcheck disable=SC2086
docker run --name "$name" -d -v "$work/src:/src" -w /src $ca_args "$IMAGE" sh -c '
	export DEBIAN_FRONTEND=noninteractive
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends make >/dev/null; }; then
		echo "make could not be installed" > /src/test.log; exit 0
	fi
	make test > /src/test.log 2>&1; echo "make test exited $?" >> /src/test.log
	make demo > /src/demo.log 2>&1' >/dev/null ||
	{ say "SKIP: the engine cannot run a container here"; exit 0; }
# make test: up to 40 minutes
for _ in $(seq 1 2400); do
	grep -qE '^(make test exited|make could not be installed)' "$work/src/test.log" 2>/dev/null && break
	docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null | grep -q true || break
	sleep 1
done
if grep -q '^make could not be installed' "$work/src/test.log" 2>/dev/null; then
	say "SKIP: the container could not install make (no Debian mirror reachable from it)"
	exit 0
fi
grep -E '^   FAIL: ' "$work/src/test.log" 2>/dev/null | sed 's/^/   | /'
tail -n 15 "$work/src/test.log" 2>/dev/null | sed 's/^/   | /'
cp "$work/src/test.log" "${FRESH_LOG:-/tmp/tollgate-fresh-test.log}" 2>/dev/null
verdict=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$work/src/test.log" | tail -n 1)
case "$verdict" in
*" passed, 0 failed, "*) say "make test: $verdict" ;;
"") fail "make test printed no verdict" ;;
*) fail "make test: $verdict; failed: $(grep -E '^   FAIL: ' "$work/src/test.log" | sed 's/^   FAIL: //' | grep -v ' exited with status ' | tr '\n' ' ')" ;;
esac
# make demo: the walkthrough's first call
answer=""
for _ in $(seq 1 120); do
	answer=$(docker exec "$name" curl -s -m 2 \
		'http://localhost:8080/v1/chat/completions/quota?consumer=aliyun-user1' \
		-H 'x-api-key: admin-key-123' -H 'x-higress-llm-model: qwen-max' 2>/dev/null)
	case "$answer" in *'"consumer":"aliyun-user1"'*) break ;; esac
	sleep 1
done
case "$answer" in
*'"consumer":"aliyun-user1","quota":'*) say "make demo answered: $answer" ;;
*) tail -n 20 "$work/src/demo.log" 2>/dev/null; fail "make demo did not answer the first curl: $answer" ;;
esac
echo "PASS: fresh_machine"
