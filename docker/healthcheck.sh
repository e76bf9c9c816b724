#!/bin/bash
# docker/healthcheck.sh -- the agent container's HEALTHCHECK: GET /healthz on
# the agent's HTTP port answers 200, and the HAProxy files were rendered.
# bash (Essential in Debian) talks HTTP through /dev/tcp, so the runtime
# image needs no HTTP client. Docker's --timeout bounds the whole script.
#
#   TOLLGATE_HEALTH_HOST   default: this container's hostname, which
#                          /etc/hosts maps to its own address (reached whether
#                          agent.http listens there or on 0.0.0.0)
#   TOLLGATE_HEALTH_PORT   default 8001 (agent.http)
#   TOLLGATE_HAPROXY_DIR   default /run/tollgate/haproxy ("" skips that check)
set -u

host=${TOLLGATE_HEALTH_HOST:-${HOSTNAME:-127.0.0.1}}
port=${TOLLGATE_HEALTH_PORT:-8001}
dir=${TOLLGATE_HAPROXY_DIR-/run/tollgate/haproxy}

if [ -n "$dir" ] && [ ! -s "$dir/haproxy.cfg" ]; then
	echo "unhealthy: $dir/haproxy.cfg not rendered"
	exit 1
fi
if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
	echo "unhealthy: cannot connect to $host:$port"
	exit 1
fi
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
if ! IFS= read -r -t 2 status <&3; then
	echo "unhealthy: no answer from $host:$port"
	exit 1
fi
exec 3<&-
case "$status" in
"HTTP/1."?" 200 "*)
	echo "healthy"
	exit 0
	;;
esac
echo "unhealthy: $status"
exit 1
