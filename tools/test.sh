#!/bin/sh
# Runs every test suite on every Lua version present, prints each result as
# a TAP line, and ends with one line: "N passed, N failed, N skipped".
#   sh tools/test.sh         everything, in two lanes that run at once
#   sh tools/test.sh quick   the Lua 5.4 specs and the C API test only
# A check whose tool is missing prints "skip - name: why" and counts as
# skipped.  Exits non-zero when anything failed, or when the Lua 5.4 suite
# itself cannot run (no compiler, lua5.4, its headers or busted).
set -u
cd "$(dirname "$0")/.." || exit 1

LUAS=${LUAS:-"lua5.4 lua5.3 lua5.2 lua5.1 luajit"}
STRESS_OPS=${STRESS_OPS:-20000}   # per thread, 8 threads; make check raises it
CHURN_THREADS=${CHURN_THREADS:-100000}
CC=${CC:-cc}
QUICK=
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
out=build/test
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)
busted=$(command -v busted)
results=/dev/null # each section records into a file of its own

# ---------------------------------------------------------------------------
# Helpers

# result OK|FAIL|SKIP NAME [LOG|WHY]: records one check.
result() {
  case $1 in
    OK) echo "ok - $2" >>"$results" ;;
    SKIP) echo "skip - $2: $3" >>"$results" ;;
    *)
      echo "not ok - $2" >>"$results"
      if [ -n "${3:-}" ] && [ -f "$3" ]; then sed 's/^/#   /' "$3" | tail -n 40 >>"$results"; fi
      ;;
  esac
}

# check NAME LOG CMD...: runs CMD with its output in LOG; passes if it exits 0.
check() {
  name=$1 log=$2
  shift 2
  if "$@" >"$log" 2>&1; then result OK "$name"; else result FAIL "$name" "$log"; fi
}

# tap_run NAME LOG CMD...: runs CMD, whose output is TAP, and records its
# results as "NAME: ..."; a non-zero exit without a failed test fails too.
tap_run() {
  name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1
  status=$?
  sed -n "s/^\(not ok\|ok\) [0-9]* *- /\1 - $name: /p" "$log" >>"$results"
  grep -E '^#|ERROR: |runtime error|==[0-9]+== ' "$log" | tail -n 40 >>"$results"
  if [ $status -ne 0 ] && ! grep -q '^not ok' "$log"; then
    result FAIL "$name: exited with status $status" "$log"
  fi
}

# own_tap NAME LOG CMD...: as tap_run for a CMD whose TAP lines name
# themselves ("ok - NAME: ..."); exit status 77 means "skipped".
own_tap() {
  name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1
  status=$?
  grep -E '^(ok|not ok|skip) - |^#' "$log" >>"$results"
  if [ $status -ne 0 ] && [ $status -ne 77 ] && ! grep -q '^not ok' "$log"; then
    result FAIL "$name: exited with status $status" "$log"
  fi
}

# build LOG MAKE-ARGS...: builds quietly; the caller records a failure.
build() {
  log=$1
  shift
  make --no-print-directory "$@" >"$log" 2>&1
}

# specs NAME LUA CPATH [BUSTED-ARGS...]: the busted specs as TAP.
specs() {
  name=$1 lua=$2 cpath=$3
  shift 3
  TL_LUA="$lua" tap_run "$name" "$out/$name.tap" "$lua" "$busted" -o TAP \
    --lpath='spec/?.lua;lua/?.lua' --cpath="$cpath/?.so" "$@" spec
}

have() { "$@" >/dev/null 2>&1; }

incdir() {
  case "$1" in
    luajit) echo /usr/include/luajit-2.1 ;;
    *) echo "/usr/include/$1" ;;
  esac
}

has_lua() { have "$1" -v && [ -f "$(incdir "$1")/lua.h" ]; }

# can_build FLAGS: the compiler builds and runs a program with FLAGS.
can_build() {
  d=$(mktemp -d "$out/probe.XXXXXX")
  printf 'int main(void) { return 0; }\n' >"$d/p.c"
  # shellcheck disable=SC2086
  "$CC" $1 -o "$d/p" "$d/p.c" >/dev/null 2>&1 && "$d/p" >/dev/null 2>&1
}

# section NAME FUNC [ARGS...]: runs one section, records into its own file,
# then prints what it recorded and how long it took, whole.
section() {
  sec=$1
  shift
  results="$out/section-$sec.tap"
  : >"$results"
  t0=$(date +%s)
  "$@"
  echo "# section $sec: $(($(date +%s) - t0)) s" >>"$results"
  flock "$out/print.lock" cat "$results"
}

# ---------------------------------------------------------------------------
# Sections

# lua_suite LUA: builds, the C API test, the specs.
lua_suite() {
  lua=$1
  if ! has_lua "$lua"; then
    result SKIP "$lua: builds, C API test and specs" "interpreter or headers missing"
    return
  fi
  if ! build "$out/$lua-build.log" LUA="$lua" BUILD="build/$lua" CFLAGS="-O2 -g -Werror" helper; then
    result FAIL "$lua: module, spec helper and C API test build warning-free with gcc" \
      "$out/$lua-build.log"
    return
  fi
  result OK "$lua: module, spec helper and C API test build warning-free with gcc"
  tap_run "$lua" "$out/$lua-capi.tap" "build/$lua/capi_test"
  if ! have "$lua" "$busted" --version; then
    result SKIP "$lua: specs" "busted is not installed for $lua"
    return
  fi
  specs "$lua" "$lua" "build/$lua" ${QUICK:+--exclude-tags=nogrind}
}

asan_suite() {
  if ! can_build "$SAN"; then
    result SKIP "asan+ubsan: C API test, specs, fork and out of memory" "$CC cannot build with $SAN"
    return
  fi
  if ! build "$out/asan-build.log" LUA=lua5.4 BUILD=build/asan CFLAGS="-O1 -g -Werror $SAN" \
      LDFLAGS="$SAN" helper reliability; then
    result FAIL "build with AddressSanitizer and UndefinedBehaviorSanitizer" "$out/asan-build.log"
    return
  fi
  # LeakSanitizer is on (ASan's default on Linux); every report fails the run.
  tap_run "asan+ubsan capi" "$out/asan-capi.tap" build/asan/capi_test
  specs "asan+ubsan specs" build/asan/spec_host build/asan
  for t in fork oom hostile names; do
    tap_run "asan+ubsan" "$out/asan-$t.tap" "build/asan/${t}_test"
  done
}

# Before Lua 5.3 a long string is pushed through a protected call of its own,
# and LuaJIT with the JIT on gives a Local Lua closures made by jit.lua: out
# of memory there must not leak or crash either.
asan_oom() {
  lua=$1
  if ! can_build "$SAN"; then
    result SKIP "asan+ubsan $lua: out of memory" "$CC cannot build with $SAN"
  elif ! has_lua "$lua"; then
    result SKIP "asan+ubsan $lua: out of memory" "$lua or its headers are missing"
  elif build "$out/asan-$lua-build.log" LUA="$lua" BUILD="build/asan-$lua" \
      CFLAGS="-O1 -g -Werror $SAN" LDFLAGS="$SAN" "build/asan-$lua/oom_test"; then
    tap_run "asan+ubsan $lua" "$out/asan-$lua-oom.tap" "build/asan-$lua/oom_test"
  else
    result FAIL "build oom_test for $lua with AddressSanitizer" "$out/asan-$lua-build.log"
  fi
}

tsan_stress() {
  if ! can_build -fsanitize=thread; then
    result SKIP "tsan: stress" "$CC cannot build with -fsanitize=thread"
  elif build "$out/tsan-build.log" LUA=lua5.4 BUILD=build/tsan CFLAGS="-O1 -g -Werror -fsanitize=thread" \
      LDFLAGS="-fsanitize=thread" build/tsan/stress_test; then
    # ThreadSanitizer exits non-zero after any report.
    tap_run "tsan" "$out/tsan-stress.tap" build/tsan/stress_test "$STRESS_OPS"
  else
    result FAIL "build with ThreadSanitizer" "$out/tsan-build.log"
  fi
}

reliability() {
  if ! build "$out/reliability-build.log" LUA=lua5.4 BUILD=build/lua5.4 CFLAGS="-O2 -g -Werror" \
      reliability; then
    result FAIL "build the reliability checks" "$out/reliability-build.log"
    return
  fi
  tap_run "lua5.4" "$out/churn.tap" build/lua5.4/churn_test "$CHURN_THREADS"
  tap_run "lua5.4" "$out/hostile.tap" build/lua5.4/hostile_test
  tap_run "lua5.4" "$out/names.tap" build/lua5.4/names_test
}

# The specs that run a finalizer in every allocation (their names say
# "finalizers") take minutes under valgrind: they run under ASan.  Specs
# tagged #nogrind measure memory or spawn processes of their own.
valgrind_specs() {
  if ! have valgrind --version; then
    result SKIP "valgrind memcheck specs" "valgrind is not installed"
    return
  fi
  TL_LUA=lua5.4 tap_run "valgrind memcheck specs" "$out/valgrind.tap" \
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite lua5.4 "$busted" -o TAP --lpath='spec/?.lua;lua/?.lua' \
    --cpath='build/lua5.4/?.so' --filter-out='finalizers' --exclude-tags=nogrind spec
}

# Before Lua 5.3 (and in LuaJIT) pushing a string may run a finalizer before
# it copies the bytes: those specs under valgrind on lua5.1 too.
valgrind_51() {
  if have valgrind --version && [ -f build/lua5.1/threadlocal.so ] && have lua5.1 -v; then
    TL_LUA=lua5.1 tap_run "valgrind memcheck lua5.1" "$out/valgrind51.tap" \
      valgrind -q --error-exitcode=99 lua5.1 "$busted" -o TAP --lpath='spec/?.lua;lua/?.lua' \
      --cpath='build/lua5.1/?.so' --filter='string read while finalizers' spec/shared_spec.lua
  else
    result SKIP "valgrind memcheck lua5.1: string reads under finalizers" \
      "valgrind, lua5.1 or its build is missing"
  fi
}

clang_build() {
  name="module, spec helper, C API test and example hosts build warning-free with clang"
  if ! have clang --version; then
    result SKIP "$name" "clang is not installed"
  else
    check "$name" "$out/clang.log" make --no-print-directory LUA=lua5.4 BUILD=build/clang CC=clang \
      CFLAGS="-O2 -Werror" helper examples
  fi
}

# The demo: each thread always prints its own number, and the turns
# interleave.  The pool host: per-worker context from C, and the Peewee case.
demos() {
  log="$out/demo.log"
  name="demo: threads A and B interleave and each prints its own number"
  if build "$log" LUA=lua5.4 BUILD=build/lua5.4 examples &&
    build/lua5.4/demo_host examples/demo.lua >"$out/demo.out" 2>>"$log"; then
    a=$(grep -c '^Thread A has number 100$' "$out/demo.out")
    b=$(grep -c '^Thread B has number 200$' "$out/demo.out")
    lines=$(wc -l <"$out/demo.out")
    first_b=$(grep -n '^Thread B' "$out/demo.out" | head -n 1 | cut -d: -f1)
    last_a=$(grep -n '^Thread A' "$out/demo.out" | tail -n 1 | cut -d: -f1)
    cat "$out/demo.out" >>"$log"
    if [ "$a" = 3 ] && [ "$b" = 3 ] && [ "$lines" = 6 ] && [ "${first_b:-9}" -lt "${last_a:-0}" ]
    then result OK "$name"; else result FAIL "$name" "$log"; fi
  else
    result FAIL "demo: builds and runs" "$log"
  fi
  name="pool host: per-worker context from C, request contexts handed from the acceptor, one worker switched database, no wrong writes"
  log="$out/pool.log"
  if build/lua5.4/pool_host examples >"$log" 2>&1 && grep -q '^ok: only worker [0-9] switched' "$log"
  then result OK "$name"; else result FAIL "$name" "$log"; fi
}

# The host examples (examples/NAME/run.sh print their own "NAME: ..." TAP
# lines; 77 means a tool they need is missing).  HAProxy runs the example
# services from 4 threads; wrk, sysbench and nginx's worker threads run
# LuaJIT states (docs/hosts.md).
example() { # NAME WHAT
  own_tap "$1" "$out/$1.tap" sh "examples/$1/run.sh"
  if [ $status -eq 77 ]; then
    result SKIP "$1: the $2 example" "$(sed -n "s/^# skip $1: //p" "$out/$1.tap" | head -n 1)"
  fi
}

# Real Lanes, which no Debian package has: spec/lanes_real.lua on each Lua
# whose interpreter requires "lanes" (spec/lanes_spec.lua checks the same
# protocol everywhere with the project's own host).
lanes_real() {
  found=""
  for lua in $LUAS; do
    if [ -f "build/$lua/threadlocal.so" ] && have "$lua" -e 'require "lanes"'; then
      found=1
      TL_LUA="$lua" tap_run "$lua real Lanes" "$out/$lua-lanes.tap" "$lua" "$busted" -o TAP \
        --lpath='spec/?.lua;lua/?.lua' --cpath="build/$lua/?.so" spec/lanes_real.lua
    fi
  done
  [ -n "$found" ] || result SKIP "real Lanes: spec/lanes_real.lua" "require \"lanes\" fails on every Lua here"
}

# tools/deps.sh's choice of packages, in a dry run over package lists.
deps_choice() {
  own_tap deps "$out/deps.tap" sh tools/deps_test.sh
}

# LuaRocks' builtin backend installs a module that plain lua5.4 requires.
luarocks_make() {
  name="luarocks make installs a module that lua5.4 requires from the tree"
  if ! have luarocks --version; then
    result SKIP "$name" "luarocks is not installed"
    return
  fi
  src="$out/rocksrc"
  mkdir -p "$src"
  cp -r src rockspec lua "$src"/
  check "$name" "$out/luarocks.log" sh -c '
    (cd "$1" && luarocks --lua-version 5.4 make rockspec/threadlocal-scm-1.rockspec --tree "$2") &&
    TL_TREE="$2" lua5.4 -e "
      local tree = os.getenv(\"TL_TREE\")
      package.path, package.cpath = \"\", tree .. \"/lib/lua/5.4/?.so\"
      local threadlocal = require \"threadlocal\"
      local tl = threadlocal.new(function(self, n) self.n = n end, 42)
      assert(tl.n == 42 and type(threadlocal.id()) == \"number\")
      assert(package.searchpath(\"threadlocal\", package.cpath):find(tree, 1, true) == 1)
    "' sh "$src" "$(pwd)/$out/rocktree"
}

# C hosts build against an installed threadlocal: make install and the CMake
# build, through pkg-config and the CMake package (tools/consumer_test.sh).
consumer() {
  own_tap consumer "$out/consumer.log" sh tools/consumer_test.sh "$out/consumer"
}

# The Lua companions are built in from src/tl_embedded.h: it must be what
# tools/embed.sh makes of lua/ now, byte for byte (make embed rewrites it).
embedded() {
  check "src/tl_embedded.h holds lua/threadlocal/*.lua byte for byte (else: make embed)" \
    "$out/embed.log" sh -c 'sh tools/embed.sh >"$1" && diff src/tl_embedded.h "$1"' \
    sh "$out/tl_embedded.h"
}

# musl libc: Lua 5.4 built with musl-gcc; the module, the demo host and the
# C API and stress tests built with it (tools/musl_test.sh; 77: it cannot).
musl() {
  STRESS_OPS="$STRESS_OPS" own_tap musl "$out/musl.tap" sh tools/musl_test.sh
  if [ $status -eq 77 ]; then
    result SKIP "musl: the module, demo host, C API and stress tests on a musl-built Lua 5.4" \
      "$(sed -n 's/^# skip musl: //p' "$out/musl.tap" | head -n 1)"
  fi
}

# Lint: every Lua file and rockspec, as .luacheckrc says.
luacheck_all() {
  name="luacheck: no warning in any Lua file or rockspec"
  if ! have luacheck --version; then
    result SKIP "$name" "luacheck is not installed"
  else
    check "$name" "$out/luacheck.log" luacheck --no-color -q .
  fi
}

# ---------------------------------------------------------------------------
# The run

# summary: the last line, and the exit status.
summary() {
  all="$out/results.tap"
  cat "$out"/section-*.tap >"$all"
  passed=$(grep -c '^ok' "$all")
  failed=$(grep -c '^not ok' "$all")
  skipped=$(grep -c '^skip' "$all")
  echo "# make test took $(($(date +%s) - start)) s"
  echo "$passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit
}

missing=""
have "$CC" --version || missing="$missing, a C compiler ($CC)"
have lua5.4 -v || missing="$missing, lua5.4"
[ -f "$(incdir lua5.4)/lua.h" ] || missing="$missing, $(incdir lua5.4)/lua.h"
have lua5.4 "$busted" --version || missing="$missing, busted"
if [ -n "$missing" ]; then
  section setup result FAIL "the Lua 5.4 suite can run (missing: ${missing#, })"
  summary
fi

if [ "${1:-}" = quick ]; then
  QUICK=1
  section lua5.4 lua_suite lua5.4
  summary
fi

# Two lanes of about equal length; a lane's sections share build directories
# (build/lua5.4, build/lua5.3 with HAProxy, build/lua5.1 with valgrind).
(
  section lua5.4 lua_suite lua5.4
  section reliability reliability
  section valgrind valgrind_specs
  section demos demos
  section luarocks luarocks_make
  section consumer consumer
  section luacheck luacheck_all
  section embedded embedded
  section deps deps_choice
  section clang clang_build
) &
(
  section asan asan_suite
  for lua in lua5.1 luajit; do section "asan-$lua" asan_oom "$lua"; done
  section tsan tsan_stress
  for lua in $LUAS; do
    [ "$lua" = lua5.4 ] && continue
    section "$lua" lua_suite "$lua"
    [ "$lua" = lua5.3 ] && section haproxy example haproxy HAProxy
    [ "$lua" = lua5.1 ] && section valgrind-lua5.1 valgrind_51
  done
  section wrk example wrk wrk # build/luajit, as the LuaJIT specs
  section sysbench example sysbench sysbench
  section nginx example nginx "nginx worker-thread"
  section lanes lanes_real
  section musl musl
) &
wait
summary
