# threadlocal: build, install, demo and tests.
#
#   make                 build build/$(LUA)/threadlocal.so
#   make install         install the module and threadlocal.h under $(PREFIX)
#   make demo            install what is missing, build, run the demos
#   make test            install what is missing, build, run every test on
#                        every Lua version present; ends "N passed, N failed"
#   make check           make test with bigger slow checks (stress x10, churn x3)
#   make bench           the access costs against their targets: README, Speed
#                        (LUA=luajit works)
#
# A packager can override LUA, LUA_INCDIR, PREFIX, LUA_CMODDIR, CC, CFLAGS,
# LIBFLAG and LDFLAGS.  LUA names the interpreter: lua5.1 ... lua5.4, luajit.

LUA ?= lua5.4
ifeq ($(LUA),luajit)
LUA_VERSION ?= 5.1
LUA_INCDIR ?= /usr/include/luajit-2.1
LUA_LIB ?= luajit-5.1
else
LUA_VERSION ?= $(patsubst lua%,%,$(LUA))
LUA_INCDIR ?= /usr/include/lua$(LUA_VERSION)
LUA_LIB ?= lua$(LUA_VERSION)
endif

PREFIX ?= /usr/local
LUA_CMODDIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
INCDIR ?= $(PREFIX)/include

CC ?= cc
CFLAGS ?= -O2 -g
WARNFLAGS = -std=c11 -Wall -Wextra -pedantic -Wshadow -Wcast-qual -Wc++-compat \
	-Wmissing-prototypes -Wstrict-prototypes -Wredundant-decls
LIBFLAG ?= -shared
LDFLAGS ?=
LIBS = -lpthread -ldl

BUILD ?= build/$(LUA)
MODULE = $(BUILD)/threadlocal.so
HELPER = $(BUILD)/tlhelper.so
DEMO_HOST = $(BUILD)/demo_host
POOL_HOST = $(BUILD)/pool_host

ALL_CFLAGS = $(WARNFLAGS) $(CFLAGS) -fPIC -I$(LUA_INCDIR) -Isrc

# The module is one translation unit, src/threadlocal.c, which includes the
# other parts in src/ (see its first comment).
SRC = src/threadlocal.c
SRC_PARTS = $(wildcard src/*.c src/*.h)

.PHONY: all helper reliability examples bench check deps-bench install uninstall demo test deps-demo deps-test clean

all: $(MODULE)

$(MODULE): $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ $(SRC) $(LIBS)

$(HELPER): spec/c/tlhelper.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ spec/c/tlhelper.c $(LIBS)

# What the tests need: the module, the spec helper, the C test programs, and
# a minimal `lua` to run busted in when everything is built with sanitizers.
helper: $(MODULE) $(HELPER) $(BUILD)/spec_host $(BUILD)/capi_test

# The reliability checks of make test, run on Lua 5.4 (some with sanitizers).
RELIABILITY = $(BUILD)/fork_test $(BUILD)/churn_test $(BUILD)/stress_test $(BUILD)/oom_test \
	$(BUILD)/hostile_test

reliability: $(RELIABILITY)

# C test programs that embed Lua and link the module in.
$(BUILD)/capi_test $(filter-out $(BUILD)/hostile_test,$(RELIABILITY)): $(BUILD)/%: spec/c/%.c \
		spec/c/ctest.h $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< src/threadlocal.c -l$(LUA_LIB) -lm $(LIBS)

# The hostile-input test includes the module itself, with TL_STATS.
$(BUILD)/hostile_test: spec/c/hostile_test.c spec/c/ctest.h $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< -l$(LUA_LIB) -lm $(LIBS)

$(BUILD)/spec_host: spec/c/spec_host.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ spec/c/spec_host.c -l$(LUA_LIB) -lm $(LIBS)

# The demo host links the module in, as an embedding host would.
$(DEMO_HOST): examples/demo_host.c $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ examples/demo_host.c src/threadlocal.c \
		-l$(LUA_LIB) -lm $(LIBS)

$(POOL_HOST): examples/pool_host.c $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ examples/pool_host.c src/threadlocal.c \
		-l$(LUA_LIB) -lm $(LIBS)

examples: $(DEMO_HOST) $(POOL_HOST)

$(BUILD)/floor.so: bench/floor.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ bench/floor.c

$(BUILD)/tlbench.so: bench/tlbench.c $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ bench/tlbench.c src/threadlocal.c $(LIBS)

BENCH_CSV ?= build/bench-$(LUA).csv

# Prints the table of bench/bench.lua and writes it as CSV to $(BENCH_CSV).
bench: deps-bench $(MODULE) $(HELPER) $(BUILD)/floor.so $(BUILD)/tlbench.so
	TL_LUA=$(LUA) $(LUA) -e "package.cpath = '$(BUILD)/?.so;' .. package.cpath" \
		bench/bench.lua $(BENCH_CSV)

install: $(MODULE)
	install -d $(DESTDIR)$(LUA_CMODDIR) $(DESTDIR)$(INCDIR)
	install -m 0755 $(MODULE) $(DESTDIR)$(LUA_CMODDIR)/threadlocal.so
	install -m 0644 src/threadlocal.h $(DESTDIR)$(INCDIR)/threadlocal.h

uninstall:
	rm -f $(DESTDIR)$(LUA_CMODDIR)/threadlocal.so $(DESTDIR)$(INCDIR)/threadlocal.h

deps-demo:
	@sh tools/deps.sh demo

deps-test:
	@sh tools/deps.sh test

deps-bench:
	@sh tools/deps.sh bench

demo: deps-demo
	@$(MAKE) --no-print-directory LUA=lua5.4 BUILD=build/lua5.4 examples
	build/lua5.4/demo_host examples/demo.lua
	build/lua5.4/pool_host examples

test: deps-test
	@sh tools/test.sh

# make test with bigger slow checks: stress x10, churn x3.
check: deps-test
	@STRESS_OPS=200000 CHURN_THREADS=300000 sh tools/test.sh

clean:
	rm -rf build
