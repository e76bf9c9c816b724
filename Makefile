# Tollgate -- build, test, fuzz, bench, demo.
#
#   make            build/tollgate and build/libspop.a, warning-free (-Werror)
#   make deps       the Debian packages of tests/deps.sh: checked, installed as root
#   make test       every test; last line "N passed, N failed, N skipped"
#   make asan       the same suite under AddressSanitizer + UBSan (build-asan/)
#   make fuzz       longer fuzzing: SPOP codec, body parsers (the suite fuzzes briefly)
#   make bench      benchmarks (SPOP load generator, HAProxy +/- agent)
#   make compat     conformance + e2e against every HAProxy (HAPROXY_VERSIONS)
#   make demo       HAProxy + agent + mock provider, ready for the seed's curls
#   make docker-test  the compose stack of docker/ for real: build, up, the
#                   walkthrough on :8080, Redis, Prometheus, an agent restart,
#                   down -v (every case a skip where no Docker engine starts)
#   make install    the agent, its Lua filter, an example configuration, the
#                   systemd unit and the docs (PREFIX, DESTDIR, SYSCONFDIR, ...)
#   make deb-test   build the .deb (debian/), install it with dpkg -i, run it, purge it

CC       ?= cc
BUILD    ?= build
OPT      ?= -O2 -g
SAN      ?=
CFLAGS_ALL = -std=c11 $(OPT) $(SAN) -Wall -Wextra -Werror -D_GNU_SOURCE -Ispoe -Iagent $(CPPFLAGS) $(CFLAGS)
LDLIBS_ALL = $(LDFLAGS) -lev -lhiredis -lmsgpackc -lcjson -lyaml -lcrypto -lz -lm -lpthread $(LDLIBS)

# make install: the layout of a package (DESTDIR=staging dir, PREFIX=/usr,
# SYSCONFDIR=/etc for Debian's; debian/rules says so).
PREFIX        ?= /usr/local
BINDIR        ?= $(PREFIX)/bin
DATADIR       ?= $(PREFIX)/share/tollgate
DOCDIR        ?= $(PREFIX)/share/doc/tollgate
SYSCONFDIR    ?= $(PREFIX)/etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL       ?= install

SPOE_SRC  := $(wildcard spoe/*.c)
AGENT_SRC := $(filter-out agent/main.c,$(wildcard agent/*.c))
SPOE_OBJ  := $(SPOE_SRC:%.c=$(BUILD)/%.o)
AGENT_OBJ := $(AGENT_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HDRS      := $(wildcard spoe/*.h agent/*.h tests/unit/*.h)

.PHONY: all deps test asan fuzz bench demo compat docker-test clean install deb-test
all: $(BUILD)/tollgate $(BUILD)/libspop.a $(UNIT_BIN) $(BUILD)/spop-load $(BUILD)/http-pace

$(BUILD)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# render.c embeds the Lua filter (.incbin): editing it rebuilds the agent.
$(BUILD)/agent/render.o: haproxy/tollgate.lua

$(BUILD)/libspop.a: $(SPOE_OBJ)
	ar rcs $@ $^

$(BUILD)/libtollgate.a: $(AGENT_OBJ)
	ar rcs $@ $^

$(BUILD)/tollgate: $(BUILD)/agent/main.o $(BUILD)/libtollgate.a $(BUILD)/libspop.a
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libtollgate.a $(BUILD)/libspop.a $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/unit $< $(BUILD)/libtollgate.a $(BUILD)/libspop.a -o $@ $(LDLIBS_ALL)

# The load generator has its own tiny SPOP encoder (tests/bench/spop-load.c).
$(BUILD)/spop-load: tests/bench/spop-load.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE $< -o $@ -lpthread

# HTTP requests at a fixed rate, for the p99 a request pays at a given load
# (tests/bench/http-pace.c; wrk finds maximums).
$(BUILD)/http-pace: tests/bench/http-pace.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE $< -o $@

# the Debian packages (tests/deps.sh): checked first, installed as root
deps:
	@sh tests/deps.sh

test: deps
	$(MAKE) all
	BUILD=$(BUILD) tests/run.sh

compat: all
	BUILD=$(BUILD) tests/compat.sh

# tests/docker/e2e/test_compose_stack.py, counted as make test counts; a
# fresh machine builds debian:bookworm-slim and the stand-ins first
docker-test:
	TESTS_ROOT=tests/docker TEST_MODULE_TIMEOUT=$${TEST_MODULE_TIMEOUT:-2400} tests/run.sh

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} tests/fuzz/run.sh

bench: all
	BUILD=$(BUILD) tests/bench/run.sh
	rm -f $(BUILD)/bench-versions.md
	for h in $${HAPROXY_VERSIONS:-haproxy}; do BUILD=$(BUILD) HAPROXY=$$h SUMMARY=$(BUILD)/bench-versions.md tests/bench/gateway.sh || exit 1; done
	BUILD=$(BUILD) tests/bench/governance.sh
	BUILD=$(BUILD) python3 tests/bench/large_bodies.py
	BUILD=$(BUILD) python3 tests/bench/streams.py
	@printf '\nEvery HAProxy side by side (tests/bench/gateway.sh, 50 connections flat out; spoe2: the SPOE floor)\n\n'
	@cat $(BUILD)/bench-versions.md

demo: deps
	$(MAKE) all
	BUILD=$(BUILD) examples/demo.sh

# The agent only (no tests): what a package ships.
install: $(BUILD)/tollgate
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)/examples \
	              $(DESTDIR)$(SYSCONFDIR)/tollgate $(DESTDIR)$(SYSTEMDUNITDIR)
	$(INSTALL) -m 0755 $(BUILD)/tollgate $(DESTDIR)$(BINDIR)/tollgate
	$(INSTALL) -m 0644 haproxy/tollgate.lua $(DESTDIR)$(DATADIR)/tollgate.lua
	$(INSTALL) -m 0644 examples/token-control.yaml $(DESTDIR)$(DOCDIR)/examples/token-control.yaml
	$(INSTALL) -m 0644 examples/token-control.yaml $(DESTDIR)$(SYSCONFDIR)/tollgate/tollgate.yaml
	$(INSTALL) -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	$(INSTALL) -m 0644 haproxy/README.md $(DESTDIR)$(DOCDIR)/haproxy.md
	$(INSTALL) -m 0644 doc/gateway.md doc/spop-behaviour.md $(DESTDIR)$(DOCDIR)/
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
	    dist/tollgate.service >$(DESTDIR)$(SYSTEMDUNITDIR)/tollgate.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/tollgate.service

# Build the Debian package from debian/ with dpkg-buildpackage, install it,
# run it from the installed paths, purge it (tests/package/test_deb.py; root).
deb-test:
	@sh tests/deps.sh
	BUILD=$(BUILD) TEST_DIRS=package TESTS=package/ tests/run.sh

clean:
	rm -rf build build-asan
