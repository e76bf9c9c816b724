#!/bin/sh
# tests/deps.sh -- the Debian packages the build, the demo and the tests need,
# in one place (the Makefile's `deps`, run by `make test` and `make demo`,
# and .ci/run use it; the README points here).
#
#   sh tests/deps.sh          check; as root, install what is missing
#   sh tests/deps.sh --list   print the list
#
# A check that finds everything installed touches no network. Missing
# packages are installed as root (apt-get update once, then install
# --no-install-recommends); anyone else gets the one command to run.
set -eu

# build: compiler, libraries; tests: the real HAProxy, Redis, curl, wrk,
# clang's libFuzzer and sanitizers, valgrind; the builds of other HAProxy
# versions (`make compat`) need liblua5.4-0, libpcre2-8-0, libssl3, libcrypt1;
# the .deb (`make deb-test`) is built with dpkg-dev and debhelper, its unit
# checked with systemd-analyze (package systemd: the tool, no running systemd);
# the Sentinel test runs Debian's redis-sentinel (where systemd runs, the
# package also starts its own sentinel on 26379: the tests use free ports).
PKGS="make build-essential pkg-config clang libclang-rt-14-dev
      libev-dev libhiredis-dev libmsgpack-dev libcjson-dev libyaml-dev libssl-dev zlib1g-dev
      haproxy redis-server curl wrk valgrind python3 ca-certificates openssl
      liblua5.4-0 libpcre2-8-0 libssl3 libcrypt1
      dpkg-dev debhelper systemd redis-sentinel"
# The OpenAI Node SDK test needs node and npm: Debian's when there are none
# (a machine with its own Node.js, e.g. NodeSource's, which ships npm, keeps it).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	PKGS="$PKGS nodejs npm"
fi

if [ "${1:-}" = "--list" ]; then
	echo $PKGS
	exit 0
fi

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "missing Debian packages; install them with: sudo apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi
echo "installing the missing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
