#!/bin/sh
# docker/entrypoint.sh -- the agent container's start (docker/Dockerfile).
#
#   run (default)   validate $TOLLGATE_CONFIG, render HAProxy's files into
#                   $TOLLGATE_HAPROXY_DIR, then become the agent (PID 1, so
#                   SIGTERM from `docker stop` drains it and SIGHUP reloads)
#   render          validate and render only, then exit (a one-shot)
#   ANYTHING ELSE   `tollgate ANYTHING ELSE`, e.g. `check --config F`
#
# The haproxy container loads $TOLLGATE_HAPROXY_DIR/haproxy.cfg from the
# shared volume and starts only once this container is healthy, which it
# becomes after the render (the HTTP port opens after it). The rendered
# files name each other by absolute path (lua-load, the SPOE config), so
# they are rendered in place, at the path both containers mount.
set -eu

CONFIG=${TOLLGATE_CONFIG:-/etc/tollgate/tollgate.yaml}
OUT=${TOLLGATE_HAPROXY_DIR:-/run/tollgate/haproxy}
TOLLGATE=${TOLLGATE:-tollgate}

render() {
	"$TOLLGATE" check --config "$CONFIG"
	if ! mkdir -p "$OUT" 2>/dev/null || ! [ -w "$OUT" ]; then
		echo "entrypoint: cannot write $OUT (uid $(id -u)); is the volume owned by another user?" >&2
		exit 1
	fi
	"$TOLLGATE" haproxy-config --config "$CONFIG" --out "$OUT"
	# the haproxy container runs as another user: the files must be readable
	chmod -R a+rX "$OUT"
}

case "${1:-run}" in
run)
	render
	exec "$TOLLGATE" --config "$CONFIG"
	;;
render)
	render
	;;
*)
	exec "$TOLLGATE" "$@"
	;;
esac
