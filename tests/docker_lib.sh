# tests/docker_lib.sh -- Docker on a machine with no image registry, for the
# scripts that need an engine (tests/fresh_machine.sh and make docker-test's
# tests/docker/e2e/test_compose_stack.py). Sourced (POSIX sh), never run; its
# variables are named dl_*. See "Docker on these machines" in the project's
# shared notes (DESIGN.md) and docker/README.md.
#
#   docker_engine LOGDIR         0 when the docker client talks to an engine;
#                                as root, installs Debian's docker.io (apt's
#                                log in LOGDIR) and starts `dockerd` (log:
#                                $DOCKERD_LOG, /tmp/tollgate-dockerd.log) first
#   docker_base_image IMAGE DIR  0 when IMAGE (debian:bookworm-slim) exists:
#                                present, pulled, or made with debootstrap
#                                from this machine's Debian mirror in DIR
#   docker_image TAG DOCKERFILE  0 when TAG exists: present, pulled (a short
#                                try), or built from DOCKERFILE (a stand-in
#                                FROM debian:bookworm-slim); says which
#   debian_mirror                prints the first Debian mirror of apt's sources
#   docker_compose_ready LOGDIR  0 when a compose is there; as root, installs
#                                Debian's docker-compose (1.29) where none is
#   docker_compose               runs `docker compose` (v2) or, without it,
#                                `docker-compose` (1.29, Debian 12), with "$@"
#
# On failure DOCKER_WHY says why, in a few words. DOCKER_PULL_TIMEOUT (60 s)
# bounds each pull: with no registry reachable a pull fails or hangs.
# DOCKER_LOG_DIR (/tmp) keeps the stand-ins' build logs.

DOCKER_WHY=""

dl_say() { echo "docker: $*" >&2; }

debian_mirror() {
	dl_m=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	[ -n "$dl_m" ] || dl_m=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
	echo "${dl_m:-http://deb.debian.org/debian}"
}

dl_root() { [ "$(id -u)" -eq 0 ]; }

dl_apt_install() { # $1 = log file, rest = packages
	dl_log=$1; shift
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"$@" >"$dl_log" 2>&1
}

docker_engine() {
	dl_dir=$1
	if ! docker info >/dev/null 2>&1 && dl_root && ! command -v dockerd >/dev/null 2>&1; then
		dl_say "installing Debian's Docker engine (docker.io)"
		dl_apt_install "$dl_dir/apt-docker.log" docker.io || dl_say "could not install docker.io"
	fi
	if ! docker info >/dev/null 2>&1 && dl_root && command -v dockerd >/dev/null 2>&1; then
		dl_say "starting dockerd (log: ${DOCKERD_LOG:-/tmp/tollgate-dockerd.log})"
		# its own session (a test runner's timeout signals its process
		# group), its log outside LOGDIR (it outlives the caller)
		setsid dockerd >"${DOCKERD_LOG:-/tmp/tollgate-dockerd.log}" 2>&1 &
		for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
	fi
	if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
		DOCKER_WHY="no Docker engine could be started"
		return 1
	fi
}

dl_pull() { # $1 = image; a short try: no registry may be reachable
	timeout "${DOCKER_PULL_TIMEOUT:-60}" docker pull -q "$1" >/dev/null 2>&1
}

docker_base_image() {
	dl_image=$1 dl_dir=$2
	docker image inspect "$dl_image" >/dev/null 2>&1 && return 0
	dl_pull "$dl_image" && return 0
	dl_mirror=$(debian_mirror)
	if ! command -v debootstrap >/dev/null 2>&1; then
		DOCKER_WHY="no $dl_image and no debootstrap"
		dl_root || return 1
		dl_apt_install "$dl_dir/apt-debootstrap.log" debootstrap || return 1
	fi
	dl_say "making $dl_image with debootstrap from $dl_mirror"
	if ! debootstrap --variant=minbase bookworm "$dl_dir/rootfs" "$dl_mirror" \
		>"$dl_dir/debootstrap.log" 2>&1; then
		tail -n 20 "$dl_dir/debootstrap.log" >&2
		DOCKER_WHY="no $dl_image: debootstrap from $dl_mirror failed"
		return 1
	fi
	if ! tar -C "$dl_dir/rootfs" -c . | docker import - "$dl_image" >/dev/null; then
		DOCKER_WHY="no $dl_image: docker import failed"
		return 1
	fi
	rm -rf "$dl_dir/rootfs"
}

docker_image() {
	dl_tag=$1 dl_dockerfile=$2
	if docker image inspect "$dl_tag" >/dev/null 2>&1; then
		dl_say "$dl_tag: present"
		return 0
	fi
	if dl_pull "$dl_tag"; then
		dl_say "$dl_tag: pulled"
		return 0
	fi
	dl_say "$dl_tag: no registry answered; building a stand-in from $dl_dockerfile"
	dl_log=${DOCKER_LOG_DIR:-/tmp}/standin-$(echo "$dl_tag" | tr '/:' '__').log
	if ! docker build -t "$dl_tag" -f "$dl_dockerfile" "$(dirname "$dl_dockerfile")" \
		>"$dl_log" 2>&1; then
		tail -n 20 "$dl_log" >&2
		DOCKER_WHY="$dl_tag: the stand-in $dl_dockerfile did not build (log: $dl_log)"
		return 1
	fi
}

docker_compose_ready() {
	dl_dir=$1
	docker compose version >/dev/null 2>&1 && return 0
	command -v docker-compose >/dev/null 2>&1 && return 0
	if dl_root; then
		dl_say "installing Debian's docker-compose"
		dl_apt_install "$dl_dir/apt-compose.log" docker-compose && return 0
	fi
	DOCKER_WHY="neither docker compose nor docker-compose"
	return 1
}

docker_compose() {
	if docker compose version >/dev/null 2>&1; then
		docker compose "$@"
	elif command -v docker-compose >/dev/null 2>&1; then
		docker-compose "$@"
	else
		DOCKER_WHY="neither docker compose nor docker-compose"
		echo "docker: $DOCKER_WHY" >&2
		return 127
	fi
}
