#!/bin/sh
# Installs threadlocal the ways a packager does and builds a C host against
# each install the ways a host's author does (examples/consumer/): make
# install into a scratch prefix, then the host through pkg-config and through
# the CMake package, make uninstall; make install with DESTDIR; the CMake
# build and install, then the host through its package and its threadlocal.pc.
# Prints TAP lines ("skip - name: why" when a tool is missing); exits
# non-zero when a check failed.  Usage: sh tools/consumer_test.sh [DIR]
# (scratch directory, default build/consumer; emptied first).
set -u
cd "$(dirname "$0")/.." || exit 1
dir=${1:-build/consumer}
rm -rf "$dir"
mkdir -p "$dir" || exit 1
dir=$(cd "$dir" && pwd)
# The installs must carry types/ (LuaLS files).  A tree without it is tested
# from a copy of its files, given a two-file stand-in.
if [ ! -d types ]; then
  git ls-files -co --exclude-standard | while read -r f; do [ -f "$f" ] && echo "$f"; done |
    tar -cf - -T - | (mkdir -p "$dir/tree" && tar -xf - -C "$dir/tree") || exit 1
  mkdir -p "$dir/tree/types/threadlocal" &&
    printf -- '---@meta threadlocal\nreturn {}\n' >"$dir/tree/types/threadlocal.lua" &&
    printf -- '---@meta threadlocal.context\nreturn {}\n' >"$dir/tree/types/threadlocal/context.lua" &&
    cd "$dir/tree" || exit 1
fi
CC=${CC:-cc}
LUA=lua5.4
failed=0

ok() { echo "ok - consumer: $1"; }
skip() { echo "skip - consumer: $1: $2"; }
fail() { # name [log]
  echo "not ok - consumer: $1"
  [ -n "${2:-}" ] && [ -f "$2" ] && sed 's/^/#   /' "$2" | tail -n 30
  failed=1
}
have() { "$@" >/dev/null 2>&1; }

version=$(awk '/^#define THREADLOCAL_VERSION_(MAJOR|MINOR|PATCH) /{v = v (v == "" ? "" : ".") $3} END{print v}' src/threadlocal.h)
expected_line="consumer: threadlocal $version: a Local and a shared local, from Lua and C, on 2 threads"

# run_host NAME BINARY LOG: runs a built host; it must print its line.
run_host() {
  if "$2" >"$3.out" 2>>"$3" && [ "$(cat "$3.out")" = "$expected_line" ]; then
    ok "$1"
  else
    cat "$3.out" >>"$3"
    fail "$1" "$3"
  fi
}

# build_pkgconfig NAME PCDIR: builds and runs the host as the README says.
build_pkgconfig() {
  log="$dir/$(echo "$1" | tr -c 'a-z0-9\n' '-').log"
  if ! have pkg-config --version; then
    skip "$1" "pkg-config is not installed"
    return
  fi
  if [ "$(PKG_CONFIG_PATH=$2 pkg-config --modversion threadlocal 2>>"$log")" = "$version" ] &&
    (cd examples/consumer &&
      PKG_CONFIG_PATH=$2 sh -c "$CC -Wall -Wextra -Werror -o '$dir/host-pc' host.c \
        \$(pkg-config --cflags --libs threadlocal) -llua5.4") >>"$log" 2>&1; then
    run_host "$1" "$dir/host-pc" "$log"
  else
    fail "$1" "$log"
  fi
  rm -f "$dir/host-pc"
}

# build_cmake NAME PREFIX: builds and runs examples/consumer with CMake.
build_cmake() {
  log="$dir/$(echo "$1" | tr -c 'a-z0-9\n' '-').log"
  if ! have cmake --version; then
    skip "$1" "cmake is not installed"
    return
  fi
  rm -rf "$dir/host-cmake"
  if cmake -S examples/consumer -B "$dir/host-cmake" -DCMAKE_PREFIX_PATH="$2" \
      -DCMAKE_C_COMPILER="$CC" -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$log" 2>&1 &&
    cmake --build "$dir/host-cmake" >>"$log" 2>&1; then
    run_host "$1" "$dir/host-cmake/host" "$log"
  else
    fail "$1" "$log"
  fi
  rm -rf "$dir/host-cmake"
}

# installed PREFIX: the files make install must put under PREFIX.
installed() {
  echo "$1/lib/lua/5.4/threadlocal.so"
  echo "$1/include/threadlocal.h"
  echo "$1/lib/libthreadlocal.a"
  echo "$1/lib/pkgconfig/threadlocal.pc"
  for f in threadlocal-config.cmake threadlocal-config-version.cmake threadlocal-targets.cmake; do
    echo "$1/lib/cmake/threadlocal/$f"
  done
  find lua -name '*.lua' -type f 2>/dev/null | sed "s|^lua/|$1/share/lua/5.4/|"
  find types -type f 2>/dev/null | sed "s|^types/|$1/share/threadlocal/types/|"
}

# all_present PREFIX: every file of installed PREFIX is there.
all_present() {
  for f in $(installed "$1"); do
    [ -f "$f" ] || { echo "missing: $f"; return 1; }
  done
}

# make install into a scratch prefix.
prefix="$dir/prefix"
mk="make --no-print-directory LUA=$LUA BUILD=$dir/build"
log="$dir/make-install.log"
if $mk install PREFIX="$prefix" DESTDIR= >"$log" 2>&1 &&
  installed "$prefix" | sort >"$dir/expected" &&
  find "$prefix" ! -type d | sort >"$dir/found" &&
  diff "$dir/expected" "$dir/found" >>"$log"; then
  ok "make install puts the module, threadlocal.h, libthreadlocal.a, threadlocal.pc, the CMake package, lua/ and types/ under PREFIX"
else
  fail "make install puts the module, threadlocal.h, libthreadlocal.a, threadlocal.pc, the CMake package, lua/ and types/ under PREFIX" "$log"
  exit 1
fi

# requires PREFIX: plain lua5.4 requires the module and every lua/ module
# from PREFIX, but not the internal threadlocal.jit (built into the module).
modules=$(find lua -name '*.lua' -type f 2>/dev/null | sed 's|^lua/||; s|\.lua$||; s|/init$||; s|/|.|g')
requires() {
  TL_PREFIX="$1" TL_MODULES="$modules" $LUA -e '
    local prefix = os.getenv("TL_PREFIX")
    package.path = prefix .. "/share/lua/5.4/?.lua;" .. prefix .. "/share/lua/5.4/?/init.lua"
    package.cpath = prefix .. "/lib/lua/5.4/?.so"
    local threadlocal = require "threadlocal"
    assert(threadlocal.new().x == nil and threadlocal.version)
    for name in os.getenv("TL_MODULES"):gmatch("%S+") do
      assert(package.searchpath(name, package.path), name .. " is not installed")
      require(name)
    end
    local found, err = pcall(require, "threadlocal.jit")
    assert(not found, "require \"threadlocal.jit\" works")
    assert(err:find("not found", 1, true), err)
  '
}
log="$dir/require.log"
if requires "$prefix" >"$log" 2>&1; then
  ok "lua5.4 requires threadlocal${modules:+ and }$(echo $modules | sed 's/ /, /g') from the prefix, not threadlocal.jit"
else
  fail "lua5.4 requires threadlocal and the lua/ modules from the prefix, not threadlocal.jit" "$log"
fi

build_pkgconfig "a host builds through make install's threadlocal.pc and runs" "$prefix/lib/pkgconfig"
build_cmake "a host builds through make install's CMake package and runs" "$prefix"

log="$dir/make-uninstall.log"
if $mk uninstall PREFIX="$prefix" DESTDIR= >"$log" 2>&1 &&
  [ -z "$(find "$prefix" ! -type d -o -name '*threadlocal*')" ]; then
  ok "make uninstall leaves no file behind"
else
  find "$prefix" ! -type d -o -name '*threadlocal*' >>"$log"
  fail "make uninstall leaves no file behind" "$log"
fi

# A staged install: the files go under DESTDIR, the paths they name do not.
stage="$dir/stage"
log="$dir/destdir.log"
if $mk install PREFIX=/opt/tl DESTDIR="$stage" >"$log" 2>&1 &&
  installed "$stage/opt/tl" | sort >"$dir/expected" &&
  find "$stage" ! -type d | sort >"$dir/found" &&
  diff "$dir/expected" "$dir/found" >>"$log" &&
  grep -qx 'prefix=/opt/tl' "$stage/opt/tl/lib/pkgconfig/threadlocal.pc" &&
  ! grep -rq "$stage" "$stage" &&
  $mk uninstall PREFIX=/opt/tl DESTDIR="$stage" >>"$log" 2>&1 &&
  [ -z "$(find "$stage" ! -type d)" ]; then
  ok "make install and uninstall with DESTDIR stage the files, which name PREFIX only"
else
  fail "make install and uninstall with DESTDIR stage the files, which name PREFIX only" "$log"
fi

# The CMake build.
name="cmake builds and installs the module, libthreadlocal.a, threadlocal.h, threadlocal.pc, the CMake package, lua/ and types/; not threadlocal.jit"
log="$dir/cmake-install.log"
cprefix="$dir/cmake-prefix"
if ! have cmake --version; then
  skip "$name" "cmake is not installed"
elif cmake -S . -B "$dir/cmake-build" -DCMAKE_INSTALL_PREFIX="$cprefix" -DCMAKE_C_COMPILER="$CC" \
    -DCMAKE_INSTALL_LIBDIR=lib -DTHREADLOCAL_LUA_VERSION=5.4 >"$log" 2>&1 &&
  cmake --build "$dir/cmake-build" >>"$log" 2>&1 &&
  cmake --install "$dir/cmake-build" >>"$log" 2>&1 &&
  all_present "$cprefix" >>"$log" &&
  requires "$cprefix" >>"$log" 2>&1; then
  ok "$name"
  build_cmake "a host builds through the CMake build's package and runs" "$cprefix"
  build_pkgconfig "a host builds through the CMake build's threadlocal.pc and runs" "$cprefix/lib/pkgconfig"
else
  fail "$name" "$log"
fi

exit $failed
