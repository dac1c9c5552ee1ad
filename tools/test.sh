#!/bin/sh
# Runs every test suite on every Lua version present, prints each result as
# a TAP line, and ends with one line: "N passed, N failed, N skipped".
# A check whose tool is missing (an interpreter, busted, valgrind, clang,
# luarocks, cmake, luacheck, sanitizer support) prints "skip - name: why"
# and counts as skipped.  Exits non-zero when anything failed, or when the
# Lua 5.4 suite itself cannot run (no compiler, lua5.4, its headers or busted).
set -u
cd "$(dirname "$0")/.." || exit 1

LUAS=${LUAS:-"lua5.4 lua5.3 lua5.2 lua5.1 luajit"}
# Sizes of the slow checks; make check raises them.
STRESS_OPS=${STRESS_OPS:-20000}   # per thread, 8 threads
CHURN_THREADS=${CHURN_THREADS:-100000}
out=build/test
rm -rf "$out"
mkdir -p "$out"
results="$out/results.tap"
: >"$results"

# result OK|FAIL|SKIP name [log|why]: records one check.
result() {
  if [ "$1" = OK ]; then
    echo "ok - $2" | tee -a "$results"
  elif [ "$1" = SKIP ]; then
    echo "skip - $2: $3" | tee -a "$results"
  else
    echo "not ok - $2" | tee -a "$results"
    [ -n "${3:-}" ] && [ -f "$3" ] && sed 's/^/#   /' "$3" | tail -n 40
  fi
}

incdir() {
  case "$1" in
    luajit) echo /usr/include/luajit-2.1 ;;
    *) echo "/usr/include/$1" ;;
  esac
}

# have CMD...: CMD is installed and runs (a stand-in that fails is missing).
have() { "$@" >/dev/null 2>&1; }

# summary: the last line, and the exit status.
summary() {
  passed=$(grep -c '^ok' "$results")
  failed=$(grep -c '^not ok' "$results")
  skipped=$(grep -c '^skip' "$results")
  echo "$passed passed, $failed failed, $skipped skipped"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit
}

busted=$(command -v busted)
# The Lua 5.4 suite: without it, make test fails.
lua54_missing=""
have "${CC:-cc}" --version || lua54_missing="$lua54_missing, a C compiler (${CC:-cc})"
have lua5.4 -v || lua54_missing="$lua54_missing, lua5.4"
[ -f "$(incdir lua5.4)/lua.h" ] || lua54_missing="$lua54_missing, $(incdir lua5.4)/lua.h"
have lua5.4 "$busted" --version || lua54_missing="$lua54_missing, busted"
if [ -n "$lua54_missing" ]; then
  result FAIL "the Lua 5.4 suite can run (missing: ${lua54_missing#, })"
fi

for lua in $LUAS; do
  if ! have "$lua" -v || [ ! -f "$(incdir "$lua")/lua.h" ]; then
    # Lua 5.4's failure is recorded above.
    [ "$lua" != lua5.4 ] && result SKIP "$lua: builds, C API test and specs" "interpreter or headers missing"
    continue
  fi
  echo "# $lua"
  log="$out/$lua-build.log"
  if make --no-print-directory LUA="$lua" BUILD="build/$lua" CFLAGS="-O2 -g -Werror" \
      helper >"$log" 2>&1; then
    result OK "$lua: module, spec helper and C API test build warning-free with gcc"
  else
    result FAIL "$lua: module, spec helper and C API test build warning-free with gcc" "$log"
    continue
  fi
  capi="$out/$lua-capi.tap"
  "build/$lua/capi_test" >"$capi" 2>&1
  status=$?
  sed -n "s/^\(not ok\|ok\) - /\1 - $lua: /p" "$capi" | tee -a "$results"
  grep '^#' "$capi"
  if [ $status -ne 0 ] && ! grep -q '^not ok' "$capi"; then
    result FAIL "$lua: capi_test exited with status $status" "$capi"
  fi
  if ! have "$lua" "$busted" --version; then
    [ "$lua" != lua5.4 ] && result SKIP "$lua: specs" "busted is not installed for $lua"
    continue
  fi
  tap="$out/$lua-busted.tap"
  TL_LUA="$lua" "$lua" "$busted" -o TAP --lpath='spec/?.lua;lua/?.lua' \
    --cpath="build/$lua/?.so" spec >"$tap" 2>&1
  status=$?
  sed -n "s/^\(not ok\|ok\) [0-9]* - /\1 - $lua: /p" "$tap" | tee -a "$results"
  grep '^#' "$tap" | tail -n 60
  if [ $status -ne 0 ] && ! grep -q '^not ok' "$tap"; then
    result FAIL "$lua: busted exited with status $status" "$tap"
  fi
done

# tap_run NAME LOG CMD...: runs CMD, whose output is TAP, and records its
# results as "NAME: ..."; a non-zero exit without a failed test fails too.
tap_run() {
  name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1
  status=$?
  sed -n "s/^\(not ok\|ok\) [0-9]* *- /\1 - $name: /p" "$log" | tee -a "$results"
  grep -E '^#|ERROR: |runtime error|==[0-9]+== ' "$log" | tail -n 40
  if [ $status -ne 0 ] && ! grep -q '^not ok' "$log"; then
    result FAIL "$name: exited with status $status" "$log"
  fi
}

# Everything below runs on Lua 5.4.
if [ -n "$lua54_missing" ]; then
  result SKIP "reliability, clang, demos, luarocks, consumer and lint checks" "the Lua 5.4 suite cannot run"
  summary
fi

# can_build FLAGS: the compiler builds and runs a program with FLAGS (the
# sanitizers need their runtime libraries).
can_build() {
  printf 'int main(void) { return 0; }\n' >"$out/probe.c"
  # shellcheck disable=SC2086
  "${CC:-cc}" $1 -o "$out/probe" "$out/probe.c" >/dev/null 2>&1 && "$out/probe" >/dev/null 2>&1
}

echo "# reliability (lua5.4)"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
log="$out/asan-build.log"
if ! can_build "$SAN"; then
  result SKIP "asan+ubsan: C API test, specs, fork and out of memory" "${CC:-cc} cannot build with $SAN"
elif make --no-print-directory LUA=lua5.4 BUILD=build/asan CFLAGS="-O1 -g -Werror $SAN" LDFLAGS="$SAN" \
    helper reliability >"$log" 2>&1; then
  # LeakSanitizer is on (ASan's default on Linux); every report fails the run.
  tap_run "asan+ubsan capi" "$out/asan-capi.tap" build/asan/capi_test
  TL_LUA=build/asan/spec_host tap_run "asan+ubsan specs" "$out/asan-specs.tap" \
    build/asan/spec_host "$(command -v busted)" -o TAP --lpath='spec/?.lua;lua/?.lua' \
    --cpath='build/asan/?.so' spec
  tap_run "asan+ubsan" "$out/asan-fork.tap" build/asan/fork_test
  tap_run "asan+ubsan" "$out/asan-oom.tap" build/asan/oom_test
  tap_run "asan+ubsan" "$out/asan-hostile.tap" build/asan/hostile_test
else
  result FAIL "build with AddressSanitizer and UndefinedBehaviorSanitizer" "$log"
fi
# Before Lua 5.3 a long string is pushed through a protected call of its own,
# and LuaJIT with the JIT on gives a Local Lua closures made by jit.lua: out
# of memory there must not leak or crash either.
for lua in lua5.1 luajit; do
  log="$out/asan-$lua-build.log"
  if ! can_build "$SAN"; then
    result SKIP "asan+ubsan $lua: out of memory" "${CC:-cc} cannot build with $SAN"
  elif ! have "$lua" -v || [ ! -f "$(incdir "$lua")/lua.h" ]; then
    result SKIP "asan+ubsan $lua: out of memory" "$lua or its headers are missing"
  elif make --no-print-directory LUA="$lua" BUILD="build/asan-$lua" CFLAGS="-O1 -g -Werror $SAN" \
      LDFLAGS="$SAN" "build/asan-$lua/oom_test" >"$log" 2>&1; then
    tap_run "asan+ubsan $lua" "$out/asan-$lua-oom.tap" "build/asan-$lua/oom_test"
  else
    result FAIL "build oom_test for $lua with AddressSanitizer" "$log"
  fi
done
log="$out/tsan-build.log"
if ! can_build -fsanitize=thread; then
  result SKIP "tsan: stress" "${CC:-cc} cannot build with -fsanitize=thread"
elif make --no-print-directory LUA=lua5.4 BUILD=build/tsan CFLAGS="-O1 -g -Werror -fsanitize=thread" \
    LDFLAGS="-fsanitize=thread" build/tsan/stress_test >"$log" 2>&1; then
  # ThreadSanitizer exits non-zero after any report.
  tap_run "tsan" "$out/tsan-stress.tap" build/tsan/stress_test "$STRESS_OPS"
else
  result FAIL "build with ThreadSanitizer" "$log"
fi
if make --no-print-directory LUA=lua5.4 BUILD=build/lua5.4 CFLAGS="-O2 -g -Werror" reliability >"$out/churn-build.log" 2>&1; then
  tap_run "lua5.4" "$out/churn.tap" build/lua5.4/churn_test "$CHURN_THREADS"
  tap_run "lua5.4" "$out/hostile.tap" build/lua5.4/hostile_test
  tap_run "lua5.4" "$out/names.tap" build/lua5.4/names_test
else
  result FAIL "build the reliability checks" "$out/churn-build.log"
fi
# The specs that run a finalizer in every allocation (their names say
# "finalizers") take minutes under valgrind: they run under ASan above.
# Specs tagged #nogrind measure memory or spawn processes of their own.
if have valgrind --version; then
  TL_LUA=lua5.4 tap_run "valgrind memcheck specs" "$out/valgrind.tap" \
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite lua5.4 "$busted" -o TAP --lpath='spec/?.lua;lua/?.lua' \
    --cpath='build/lua5.4/?.so' --filter-out='finalizers' --exclude-tags=nogrind spec
else
  result SKIP "valgrind memcheck specs" "valgrind is not installed"
fi
# Before Lua 5.3 (and in LuaJIT) pushing a string may run a finalizer before
# it copies the bytes: those specs under valgrind on lua5.1 too.
if have valgrind --version && [ -f build/lua5.1/threadlocal.so ] && have lua5.1 -v; then
  TL_LUA=lua5.1 tap_run "valgrind memcheck lua5.1" "$out/valgrind51.tap" \
    valgrind -q --error-exitcode=99 lua5.1 "$busted" -o TAP --lpath='spec/?.lua;lua/?.lua' \
    --cpath='build/lua5.1/?.so' --filter='string read while finalizers' spec/shared_spec.lua
else
  result SKIP "valgrind memcheck lua5.1: string reads under finalizers" "valgrind, lua5.1 or its build is missing"
fi

echo "# other checks (lua5.4)"

log="$out/clang.log"
if ! have clang --version; then
  result SKIP "module, spec helper, C API test and example hosts build warning-free with clang" \
    "clang is not installed"
elif make --no-print-directory LUA=lua5.4 BUILD=build/clang CC=clang CFLAGS="-O2 -Werror" \
    helper examples >"$log" 2>&1; then
  result OK "module, spec helper, C API test and example hosts build warning-free with clang"
else
  result FAIL "module, spec helper, C API test and example hosts build warning-free with clang" "$log"
fi

# The demo: each thread always prints its own number, and the turns interleave.
log="$out/demo.log"
if make --no-print-directory LUA=lua5.4 BUILD=build/lua5.4 examples >"$log" 2>&1 &&
  build/lua5.4/demo_host examples/demo.lua >"$out/demo.out" 2>>"$log"; then
  a=$(grep -c '^Thread A has number 100$' "$out/demo.out")
  b=$(grep -c '^Thread B has number 200$' "$out/demo.out")
  lines=$(wc -l <"$out/demo.out")
  first_b=$(grep -n '^Thread B' "$out/demo.out" | head -n 1 | cut -d: -f1)
  last_a=$(grep -n '^Thread A' "$out/demo.out" | tail -n 1 | cut -d: -f1)
  if [ "$a" = 3 ] && [ "$b" = 3 ] && [ "$lines" = 6 ] && [ "${first_b:-9}" -lt "${last_a:-0}" ]; then
    result OK "demo: threads A and B interleave and each prints its own number"
  else
    cat "$out/demo.out" >>"$log"
    result FAIL "demo: threads A and B interleave and each prints its own number" "$log"
  fi
else
  result FAIL "demo: builds and runs" "$log"
fi

# The pool host: per-worker context from C, and the Peewee case.
log="$out/pool.log"
if build/lua5.4/pool_host examples >"$log" 2>&1 && grep -q '^ok: only worker [0-9] switched' "$log"; then
  result OK "pool host: per-worker context from C, request contexts handed from the acceptor, one worker switched database, no wrong writes"
else
  result FAIL "pool host: per-worker context from C, request contexts handed from the acceptor, one worker switched database, no wrong writes" "$log"
fi

# HAProxy runs the example services from 4 threads (examples/haproxy/run.sh
# prints its own "haproxy: ..." TAP lines; 77 means haproxy or curl is missing).
log="$out/haproxy.tap"
sh examples/haproxy/run.sh >"$log" 2>&1
status=$?
grep '^\(not \)\{0,1\}ok - ' "$log" | tee -a "$results"
if [ $status -eq 77 ]; then
  result SKIP "haproxy: the HAProxy example" "$(sed -n 's/^# skip haproxy: //p' "$log" | head -n 1)"
else
  grep '^#' "$log"
fi
if [ $status -ne 0 ] && [ $status -ne 77 ] && ! grep -q '^not ok' "$log"; then
  result FAIL "haproxy: run.sh exited with status $status" "$log"
fi

# LuaRocks' builtin backend installs a module that plain lua5.4 requires.
log="$out/luarocks.log"
tree="$out/rocktree"
src="$out/rocksrc"
mkdir -p "$src"
cp -r src rockspec "$src"/
if [ -d lua ]; then cp -r lua "$src"/; fi
if ! have luarocks --version; then
  result SKIP "luarocks make installs a module that lua5.4 requires from the tree" \
    "luarocks is not installed"
elif (cd "$src" && luarocks --lua-version 5.4 make rockspec/threadlocal-scm-1.rockspec \
    --tree "$(pwd)/../rocktree") >"$log" 2>&1 &&
  TL_TREE="$(pwd)/$tree" lua5.4 -e '
    local tree = os.getenv("TL_TREE")
    package.path, package.cpath = "", tree .. "/lib/lua/5.4/?.so"
    local threadlocal = require "threadlocal"
    local tl = threadlocal.new(function(self, n) self.n = n end, 42)
    assert(tl.n == 42 and type(threadlocal.id()) == "number")
    assert(package.searchpath("threadlocal", package.cpath):find(tree, 1, true) == 1)
  ' >>"$log" 2>&1; then
  result OK "luarocks make installs a module that lua5.4 requires from the tree"
else
  result FAIL "luarocks make installs a module that lua5.4 requires from the tree" "$log"
fi

# C hosts build against an installed threadlocal: make install and the CMake
# build, through pkg-config and the CMake package (tools/consumer_test.sh).
log="$out/consumer.log"
sh tools/consumer_test.sh "$out/consumer" >"$log" 2>&1
status=$?
grep -E '^(ok|not ok|skip) - ' "$log" | tee -a "$results"
grep '^#' "$log"
if [ $status -ne 0 ] && ! grep -q '^not ok' "$log"; then
  result FAIL "consumer: exited with status $status" "$log"
fi

# Lint: every Lua file and rockspec, as .luacheckrc says.
log="$out/luacheck.log"
if ! have luacheck --version; then
  result SKIP "luacheck: no warning in any Lua file or rockspec" "luacheck is not installed"
elif luacheck --no-color -q . >"$log" 2>&1; then
  result OK "luacheck: no warning in any Lua file or rockspec"
else
  result FAIL "luacheck: no warning in any Lua file or rockspec" "$log"
fi

summary
