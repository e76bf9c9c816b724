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
# mirror (docker import). Where it cannot run (no engine, no image and no
# debootstrap, no Debian mirror reachable from the container) it prints
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

if ! docker info >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && ! command -v dockerd >/dev/null 2>&1; then
	say "installing Debian's Docker engine (docker.io)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		docker.io >"$work/apt.log" 2>&1 || say "could not install docker.io"
fi
if ! docker info >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v dockerd >/dev/null 2>&1; then
	say "starting dockerd"
	dockerd >"$work/dockerd.log" 2>&1 &
	for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
	say "SKIP: no Docker engine could be started"; exit 0
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1 && ! docker pull "$IMAGE" >/dev/null 2>&1; then
	mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
	[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
	if ! command -v debootstrap >/dev/null 2>&1; then
		[ "$(id -u)" -eq 0 ] || { say "SKIP: no $IMAGE and no debootstrap"; exit 0; }
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			debootstrap >/dev/null 2>&1 || { say "SKIP: no $IMAGE and no debootstrap"; exit 0; }
	fi
	say "making $IMAGE with debootstrap from $mirror"
	if ! debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
		tail -n 20 "$work/debootstrap.log"
		say "SKIP: no $IMAGE: debootstrap from $mirror failed"; exit 0
	fi
	tar -C "$work/rootfs" -c . | docker import - "$IMAGE" >/dev/null ||
		{ say "SKIP: no $IMAGE: docker import failed"; exit 0; }
	rm -rf "$work/rootfs"
fi

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
*) fail "make test: $verdict" ;;
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
