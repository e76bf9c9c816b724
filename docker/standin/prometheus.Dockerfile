# docker/standin/prometheus.Dockerfile -- a stand-in for the
# `prom/prometheus:v2.53.0` image, built by `make docker-test`
# (tests/docker_lib.sh) under that tag where no registry answers; with
# registry access the real image is pulled instead. Debian 12's prometheus
# is 2.42; the stack uses its scraping and its HTTP query API only.
FROM debian:bookworm-slim
LABEL org.tollgate.standin="prom/prometheus:v2.53.0 from Debian's prometheus"
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
# as the official image: entrypoint, arguments, data directory and user
WORKDIR /prometheus
VOLUME /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
