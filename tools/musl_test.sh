#!/bin/sh
# The module on musl libc (make test runs this; docs/platforms.md).
#   sh tools/musl_test.sh
# Builds Lua 5.4 with musl-gcc from the upstream tarball in Debian's source
# package of lua5.4 (apt-get source: needs a deb-src entry, which
# tools/deps.sh adds as root), once, in build/musl-lua.  Then builds, with
# musl-gcc and that Lua's headers, the module by the Makefile's own rules and
# the C programs that link that Lua, in build/musl, and runs: a require from
# the musl lua, the demo host, the C API test and the stress test.  busted
# needs C modules of its own, so the Lua specs run on glibc only.
# Prints TAP lines; exits 77 after "# skip musl: <why>" when it cannot run.
set -u
cd "$(dirname "$0")/.." || exit 1
cache=build/musl-lua
build=build/musl
log=build/test/musl
STRESS_OPS=${STRESS_OPS:-20000}
mkdir -p "$cache" "$log"
# The smoke test runs as a new user would: Lua's default paths.
unset LUA_PATH LUA_PATH_5_4 LUA_CPATH LUA_CPATH_5_4 LUA_INIT LUA_INIT_5_4

skip() { echo "# skip musl: $1"; exit 77; }
# check NAME CMD...: one TAP line for CMD, its output in $log/NAME.log.
check() {
  name=$1
  shift
  if "$@" >"$log/$name.log" 2>&1; then
    echo "ok - musl: $name"
  else
    echo "not ok - musl: $name"
    sed 's/^/#   /' "$log/$name.log" | tail -n 20
  fi
}

command -v musl-gcc >/dev/null 2>&1 || skip "musl-gcc is not installed (Debian: musl-tools)"

# Lua, once: upstream's Makefile builds it with musl-gcc as it is.
lua=$cache/lua/src/lua
if [ -x "$lua" ] && [ -f "$cache/lua/src/liblua.a" ]; then
  echo "ok - musl: $("$lua" -v | cut -d' ' -f1-2) built with musl-gcc (before: $cache)"
else
  tarball() { for t in "$cache"/lua5.4_*.orig.tar.gz; do [ -f "$t" ] && echo "$t"; done | tail -n 1; }
  tarball=$(tarball)
  if [ -z "$tarball" ]; then
    (cd "$cache" && apt-get source --download-only lua5.4) >"$log/download.log" 2>&1 ||
      skip "apt-get source lua5.4 failed (no deb-src entry? as root, tools/deps.sh adds one)"
    tarball=$(tarball)
    [ -n "$tarball" ] || skip "apt-get source lua5.4 gave no lua5.4_*.orig.tar.gz"
  fi
  rm -rf "$cache/lua"
  if ! mkdir "$cache/lua" || ! tar -xzf "$tarball" -C "$cache/lua" --strip-components=1; then
    skip "cannot unpack $tarball"
  fi
  check "Lua $(basename "$tarball" .orig.tar.gz | sed 's/.*_//') builds with musl-gcc" \
    make -C "$cache/lua" -j2 linux CC=musl-gcc
  [ -x "$lua" ] || exit 1
fi

# The module by the default rules: no flag but the compiler and the headers.
inc=$cache/lua/src
check "module, demo host, C API and stress tests build warning-free" \
  make --no-print-directory -j2 LUA=lua5.4 BUILD="$build" CC=musl-gcc LUA_INCDIR="$inc" \
  LUA_LIB=lua LDFLAGS="-L$inc" CFLAGS="-O2 -g -Werror" \
  "$build/threadlocal.so" "$build/demo_host" "$build/capi_test" "$build/stress_test"

# The new user's smoke test, then what the module does on it.
check "lua -e 'require \"threadlocal\"' finds the module in the current directory" \
  sh -c "cd '$build' && '$(pwd)/$lua' -e 'require \"threadlocal\"'"
check "a Local, a shared local and the built-in threadlocal.context work" \
  "$lua" -e "package.path = ''; package.cpath = '$build/?.so'
    local threadlocal = require 'threadlocal'
    local tl = threadlocal.new(function(self, n) self.n = n end, 42)
    tl.x = 'y'
    assert(tl.n == 42 and tl.x == 'y' and threadlocal.id() >= 1)
    local sh = threadlocal.shared('musl', { db = 'primary' })
    sh.db = 'replica'
    assert(threadlocal.shared('musl').db == 'replica')
    local var = require('threadlocal.context').var('v')
    var:set(1)
    assert(var:get() == 1)"

# The demo: as in tools/test.sh, each thread prints its own number, interleaved.
# shellcheck disable=SC2317  # check calls it
demo_ok() {
  "$build/demo_host" examples/demo.lua >"$log/demo.out" || return 1
  cat "$log/demo.out"
  first_b=$(grep -n '^Thread B' "$log/demo.out" | head -n 1 | cut -d: -f1)
  last_a=$(grep -n '^Thread A' "$log/demo.out" | tail -n 1 | cut -d: -f1)
  [ "$(grep -c '^Thread A has number 100$' "$log/demo.out")" = 3 ] &&
    [ "$(grep -c '^Thread B has number 200$' "$log/demo.out")" = 3 ] &&
    [ "$(wc -l <"$log/demo.out")" -eq 6 ] && [ "${first_b:-9}" -lt "${last_a:-0}" ]
}
check "demo: threads A and B interleave and each prints its own number" demo_ok

# The C programs print TAP: their lines, named musl.
for t in "capi_test" "stress_test $STRESS_OPS"; do
  # shellcheck disable=SC2086
  "$build"/$t >"$log/${t%% *}.tap" 2>&1
  status=$?
  sed -n "s/^\(not ok\|ok\) [0-9]* *- /\1 - musl ${t%% *}: /p" "$log/${t%% *}.tap"
  grep '^#' "$log/${t%% *}.tap" | tail -n 5
  if [ $status -ne 0 ] && ! grep -q '^not ok' "$log/${t%% *}.tap"; then
    echo "not ok - musl ${t%% *}: exited with status $status"
  fi
done
exit 0
