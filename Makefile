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

CC       ?= cc
BUILD    ?= build
OPT      ?= -O2 -g
SAN      ?=
CFLAGS_ALL = -std=c11 $(OPT) $(SAN) -Wall -Wextra -Werror -D_GNU_SOURCE -Ispoe -Iagent $(CFLAGS)
LDLIBS_ALL = -lev -lhiredis -lmsgpackc -lcjson -lyaml -lm -lpthread $(LDLIBS)

SPOE_SRC  := $(wildcard spoe/*.c)
AGENT_SRC := $(filter-out agent/main.c,$(wildcard agent/*.c))
SPOE_OBJ  := $(SPOE_SRC:%.c=$(BUILD)/%.o)
AGENT_OBJ := $(AGENT_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HDRS      := $(wildcard spoe/*.h agent/*.h tests/unit/*.h)

.PHONY: all deps test asan fuzz bench demo compat docker-test clean
all: $(BUILD)/tollgate $(BUILD)/libspop.a $(UNIT_BIN) $(BUILD)/spop-load

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
	BUILD=$(BUILD) tests/bench/gateway.sh
	BUILD=$(BUILD) tests/bench/governance.sh
	BUILD=$(BUILD) python3 tests/bench/large_bodies.py

demo: deps
	$(MAKE) all
	BUILD=$(BUILD) examples/demo.sh

clean:
	rm -rf build build-asan
