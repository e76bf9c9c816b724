# docker/standin/redis.Dockerfile -- a stand-in for the `redis:7` image, built
# by `make docker-test` (tests/docker_lib.sh) under that tag where no registry
# answers; with registry access the real image is pulled instead.
# Debian 12's redis-server is 7.0. Without a configuration file it runs in
# protected mode and refuses clients from other containers (the official
# image does not): the CMD turns that off, and so does the compose command.
FROM debian:bookworm-slim
LABEL org.tollgate.standin="redis:7 from Debian's redis-server"
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
# the official image's data directory and its unprivileged user
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
