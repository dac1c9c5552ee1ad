# threadlocal: build, install, demo and tests.
#
#   make                 build build/$(LUA)/threadlocal.so
#   make install         install the module, threadlocal.h, libthreadlocal.a,
#                        threadlocal.pc, the CMake package, lua/ and types/
#                        (LuaLS files, when present) under $(PREFIX)
#   make uninstall       remove what make install put
#   make demo            install what is missing, build, run the demos
#   make test            install what is missing, build, run every test on
#                        every Lua version present; ends
#                        "N passed, N failed, N skipped"
#   make quick           the Lua 5.4 specs and the C API test, for the
#                        edit-compile-test loop
#   make check           make test with bigger slow checks (stress x10, churn x3)
#   make bench           the access costs against their targets: README, Speed
#                        (LUA=luajit works)
#   make embed           rewrite src/tl_embedded.h after changing lua/ or
#                        src/tl_jit.lua
#   make dist            the release from HEAD under dist/: tarball, rockspec,
#                        .src.rock, SHA256SUMS (docs/release.md)
#
# A packager can override LUA, LUA_INCDIR, PREFIX, DESTDIR, LUA_CMODDIR,
# LUA_LDIR, INCDIR, LIBDIR, PKGCONFIGDIR, CMAKEDIR, TYPESDIR, CC, CFLAGS,
# LIBFLAG, LDFLAGS and AR.  LUA names the interpreter: lua5.1 ... lua5.4, luajit.

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
LUA_LDIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
INCDIR ?= $(PREFIX)/include
LIBDIR ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
CMAKEDIR ?= $(LIBDIR)/cmake/threadlocal
TYPESDIR ?= $(PREFIX)/share/threadlocal/types

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
HEADERS_HOST = $(BUILD)/headers_host
STATIC = $(BUILD)/libthreadlocal.a

# The release, as threadlocal.h states it.
VERSION := $(shell awk '/^\#define THREADLOCAL_VERSION_(MAJOR|MINOR|PATCH) /{v = v (v == "" ? "" : ".") $$3} END{print v}' src/threadlocal.h)
# The pure-Lua companion modules, installed under $(LUA_LDIR) by sub-path.
LUA_MODULES := $(shell find lua -name '*.lua' -type f 2>/dev/null | sort)
# The LuaLS type files, installed under $(TYPESDIR) (off package.path, where
# a types/threadlocal.lua would hide the C module) when the tree has them.
TYPES := $(shell find types -type f 2>/dev/null | sort)

ALL_CFLAGS = $(WARNFLAGS) $(CFLAGS) -fPIC -I$(LUA_INCDIR) -Isrc

# The module is one translation unit, src/threadlocal.c, which includes the
# other parts in src/ (see its first comment) and builds in the Lua
# companions (lua/, src/tl_jit.lua) from src/tl_embedded.h (make embed).
SRC = src/threadlocal.c
SRC_PARTS = $(wildcard src/*.c src/*.h)

.PHONY: all static helper reliability examples bench check deps-bench install uninstall demo test quick deps-demo deps-test clean embed dist

all: $(MODULE)

$(MODULE): $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ $(SRC) $(LIBS)

# The static library, for hosts that link the module in (position
# independent, so it may go into a shared object too).
static: $(STATIC)

$(BUILD)/threadlocal.o: $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) -c -o $@ $(SRC)

$(STATIC): $(BUILD)/threadlocal.o
	rm -f $@
	$(AR) rcs $@ $(BUILD)/threadlocal.o

$(HELPER): spec/c/tlhelper.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ spec/c/tlhelper.c $(LIBS)

# What the tests need: the module, the spec helper, the C test programs, and
# a minimal `lua` to run busted in when everything is built with sanitizers.
helper: $(MODULE) $(HELPER) $(BUILD)/spec_host $(BUILD)/capi_test

# The reliability checks of make test, run on Lua 5.4 (some with sanitizers).
RELIABILITY = $(BUILD)/fork_test $(BUILD)/churn_test $(BUILD)/stress_test $(BUILD)/oom_test \
	$(BUILD)/hostile_test $(BUILD)/names_test

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

$(HEADERS_HOST): examples/headers_host.c $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ examples/headers_host.c src/threadlocal.c \
		-l$(LUA_LIB) -lm $(LIBS)

examples: $(DEMO_HOST) $(POOL_HOST) $(HEADERS_HOST)

$(BUILD)/floor.so: bench/floor.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ bench/floor.c

$(BUILD)/tlbench.so: bench/tlbench.c $(SRC_PARTS)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ bench/tlbench.c src/threadlocal.c $(LIBS)

$(BUILD)/fixseed.so: bench/fixseed.c
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) $(LIBFLAG) $(LDFLAGS) -o $@ bench/fixseed.c

BENCH_CSV ?= build/bench-$(LUA).csv
BENCH_ROUNDS ?= 15

# Prints the table of bench/bench.lua and writes it as CSV to $(BENCH_CSV).
# With BASE=<rev>: builds that revision under build/base/ with these
# variables and compares the two builds (bench/compare.sh, docs/benchmarks.md).
bench: deps-bench $(MODULE) $(HELPER) $(BUILD)/floor.so $(BUILD)/tlbench.so \
		$(if $(BASE),$(BUILD)/fixseed.so)
ifeq ($(BASE),)
	TL_LUA=$(LUA) $(LUA) -e "package.cpath = '$(BUILD)/?.so;' .. package.cpath" \
		bench/bench.lua $(BENCH_CSV)
else
	sh bench/compare.sh '$(BASE)' '$(LUA)' '$(BUILD)' '$(BENCH_ROUNDS)' $(MAKE) LUA='$(LUA)' \
		LUA_INCDIR='$(LUA_INCDIR)' CC='$(CC)' CFLAGS='$(CFLAGS)' LIBFLAG='$(LIBFLAG)' LDFLAGS='$(LDFLAGS)'
endif

# threadlocal.pc and the CMake package files name the final paths (without
# DESTDIR), the Lua headers of this build and the version of threadlocal.h.
SUBST = sed -e 's|@prefix@|$(PREFIX)|g' -e 's|@libdir@|$(LIBDIR)|g' \
	-e 's|@includedir@|$(INCDIR)|g' -e 's|@LUA_INCDIR@|$(LUA_INCDIR)|g' \
	-e 's|@LUA_VERSION@|$(LUA_VERSION)|g' -e 's|@VERSION@|$(VERSION)|g'
CMAKE_FILES = threadlocal-config.cmake threadlocal-config-version.cmake threadlocal-targets.cmake

install: $(MODULE) $(STATIC)
	$(SUBST) threadlocal.pc.in >$(BUILD)/threadlocal.pc
	for f in $(CMAKE_FILES); do $(SUBST) cmake/$$f.in >$(BUILD)/$$f || exit 1; done
	install -d $(DESTDIR)$(LUA_CMODDIR) $(DESTDIR)$(INCDIR) $(DESTDIR)$(LIBDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(CMAKEDIR)
	install -m 0755 $(MODULE) $(DESTDIR)$(LUA_CMODDIR)/threadlocal.so
	install -m 0644 src/threadlocal.h $(DESTDIR)$(INCDIR)/threadlocal.h
	install -m 0644 $(STATIC) $(DESTDIR)$(LIBDIR)/libthreadlocal.a
	install -m 0644 $(BUILD)/threadlocal.pc $(DESTDIR)$(PKGCONFIGDIR)/threadlocal.pc
	for f in $(CMAKE_FILES); do install -m 0644 $(BUILD)/$$f $(DESTDIR)$(CMAKEDIR)/$$f || exit 1; done
	for f in $(LUA_MODULES); do \
		d=$(DESTDIR)$(LUA_LDIR)/$$(dirname "$${f#lua/}"); \
		install -d "$$d" && install -m 0644 "$$f" "$$d/" || exit 1; \
	done
	for f in $(TYPES); do \
		d=$(DESTDIR)$(TYPESDIR)/$$(dirname "$${f#types/}"); \
		install -d "$$d" && install -m 0644 "$$f" "$$d/" || exit 1; \
	done

# Removes the files install put, then the directories that are threadlocal's
# own (the CMake package's, those of lua/ and types/) if they are left empty.
uninstall:
	rm -f $(DESTDIR)$(LUA_CMODDIR)/threadlocal.so $(DESTDIR)$(INCDIR)/threadlocal.h \
		$(DESTDIR)$(LIBDIR)/libthreadlocal.a $(DESTDIR)$(PKGCONFIGDIR)/threadlocal.pc \
		$(addprefix $(DESTDIR)$(CMAKEDIR)/,$(CMAKE_FILES)) \
		$(patsubst lua/%,$(DESTDIR)$(LUA_LDIR)/%,$(LUA_MODULES)) \
		$(patsubst types/%,$(DESTDIR)$(TYPESDIR)/%,$(TYPES))
	rmdir $(DESTDIR)$(CMAKEDIR) 2>/dev/null || true
	for d in $$(find lua -mindepth 1 -type d 2>/dev/null | sort -r); do \
		rmdir "$(DESTDIR)$(LUA_LDIR)/$${d#lua/}" 2>/dev/null || true; \
	done
	for d in $$(find types -mindepth 1 -type d 2>/dev/null | sort -r); do \
		rmdir "$(DESTDIR)$(TYPESDIR)/$${d#types/}" 2>/dev/null || true; \
	done
	rmdir $(DESTDIR)$(TYPESDIR) $(DESTDIR)$(PREFIX)/share/threadlocal 2>/dev/null || true

# After changing lua/ or src/tl_jit.lua: rewrites src/tl_embedded.h, which
# make test checks.
embed:
	sh tools/embed.sh >src/tl_embedded.h.new && mv src/tl_embedded.h.new src/tl_embedded.h

# The release from the committed tree: dist/threadlocal-$(VERSION).tar.gz,
# its rockspec, the .src.rock and SHA256SUMS (docs/release.md).  HOMEPAGE=URL
# goes into the rockspec; DIST=DIR writes elsewhere.
DIST ?= dist
dist:
	@HOMEPAGE='$(HOMEPAGE)' sh tools/dist.sh '$(DIST)'

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
	@sh examples/haproxy/run.sh || [ $$? -eq 77 ]

test: deps-test
	@sh tools/test.sh

# The edit-compile-test loop: the Lua 5.4 specs and the C API test.
quick:
	@sh tools/test.sh quick

# make test with bigger slow checks: stress x10, churn x3.
check: deps-test
	@STRESS_OPS=200000 CHURN_THREADS=300000 sh tools/test.sh

clean:
	rm -rf build
