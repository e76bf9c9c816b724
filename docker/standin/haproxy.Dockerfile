# docker/standin/haproxy.Dockerfile -- a stand-in for the `haproxy:2.6` image,
# built by `make docker-test` (tests/docker_lib.sh) under that tag where no
# registry answers; with registry access the real image is pulled instead.
# Debian 12's haproxy is 2.6, built with Lua as the official image is.
FROM debian:bookworm-slim
LABEL org.tollgate.standin="haproxy:2.6 from Debian's haproxy"
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/*
# as the official image: an unprivileged user, SIGUSR1 stops it softly
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
