#!/bin/sh
# Installs from Debian's packages what `make demo` or `make test` needs and
# this machine lacks.  Usage: sh tools/deps.sh demo|test|bench
# When it cannot (not root, no apt-get, apt-get failed), it says what is
# missing and exits 0: make test then skips the checks whose tools are
# missing, and fails only if the Lua 5.4 suite cannot run.
# It never removes a package: an install that `apt-get -s` shows removing
# one is left out, with the package it would remove.
# DEPS_DRY_RUN=1 prints what it would install and installs nothing;
# DEPS_INSTALLED (package names), DEPS_APT_GET (a command) and DEPS_ROOT (a
# directory the files are looked for under) stand for dpkg's and apt-get's
# answers and the machine's files (tools/deps_test.sh).
set -u
what=${1:-test}
missing=""  # Debian packages
lacking=""  # the commands and files they provide

need_cmd() { # command package
  command -v "$1" >/dev/null 2>&1 || { missing="$missing $2"; lacking="$lacking $1"; }
}
need_file() { # file package
  [ -e "${DEPS_ROOT:-}$1" ] || { missing="$missing $2"; lacking="$lacking $1"; }
}

# installed PKG: the Debian package PKG is installed.
installed() {
  if [ -n "${DEPS_INSTALLED+set}" ]; then
    case " $DEPS_INSTALLED " in *" $1 "*) return 0 ;; esac
    return 1
  fi
  dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q ' installed$'
}

# luajit_set: whose LuaJIT packages to ask for.  Debian's (luajit,
# libluajit-5.1-dev) and OpenResty's (luajit2, libluajit2-5.1-dev), which
# nginx's Lua module needs, conflict: installing one removes the other.  A
# machine keeps the one it has; a fresh one gets OpenResty's, so that make
# test runs every example (wrk and sysbench run on either).
luajit_set() {
  for p in libluajit2-5.1-2 libluajit2-5.1-dev luajit2 libnginx-mod-http-lua; do
    installed "$p" && { echo openresty; return; }
  done
  for p in libluajit-5.1-2 libluajit-5.1-dev luajit; do
    installed "$p" && { echo debian; return; }
  done
  echo openresty
}

# need_luajit: the luajit command and headers, from one set; with
# OpenResty's, nginx's Lua module for the nginx example.
need_luajit() {
  if [ "$(luajit_set)" = openresty ]; then
    need_cmd luajit luajit2
    need_file /usr/include/luajit-2.1/lua.h libluajit2-5.1-dev
    need_file /usr/lib/nginx/modules/ngx_http_lua_module.so libnginx-mod-http-lua
  else
    need_cmd luajit luajit
    need_file /usr/include/luajit-2.1/lua.h libluajit-5.1-dev
    [ -e "${DEPS_ROOT:-}/usr/lib/nginx/modules/ngx_http_lua_module.so" ] ||
      echo "deps: not asking for libnginx-mod-http-lua (the nginx example): it needs OpenResty's LuaJIT, which would replace Debian's luajit here" >&2
  fi
}

# removals: the packages that `apt-get -s install` output (stdin) removes.
removals() {
  sed -n 's/^Remv \([^ ]*\).*/\1/p' | tr '\n' ' ' | sed 's/ $//'
}

# would_remove PKG...: what installing PKG... would remove (nothing: "").
would_remove() {
  # shellcheck disable=SC2086
  ${DEPS_APT_GET:-apt-get} -s install --no-install-recommends "$@" 2>/dev/null | removals
}

# keep_installed: leaves out of $missing each package whose install would
# remove another, and says which; if what is left still would, all of it.
keep_installed() {
  # shellcheck disable=SC2086
  [ -z "$(would_remove $missing)" ] && return 0
  kept=""
  for p in $missing; do
    gone=$(would_remove "$p")
    if [ -n "$gone" ]; then
      echo "deps: not installing $p: it would remove $gone" >&2
    else
      kept="$kept $p"
    fi
  done
  # shellcheck disable=SC2086
  gone=$(would_remove $kept)
  if [ -n "$gone" ]; then
    echo "deps: not installing$kept: together they would remove $gone" >&2
    kept=""
  fi
  missing=$kept
}

need_cmd cc gcc
need_cmd lua5.4 lua5.4
need_file /usr/include/lua5.4/lua.h liblua5.4-dev
if [ "$what" = test ] || [ "$what" = demo ]; then
  # The HAProxy example: haproxy embeds Lua 5.3.
  need_cmd haproxy haproxy
  need_cmd curl curl
  need_cmd lua5.3 lua5.3
  need_file /usr/include/lua5.3/lua.h liblua5.3-dev
fi
if [ "$what" = bench ]; then
  need_cmd valgrind valgrind
  need_cmd python3 python3
fi
if [ "$what" = test ]; then
  need_cmd clang clang
  need_cmd lua5.3 lua5.3
  need_file /usr/include/lua5.3/lua.h liblua5.3-dev
  need_cmd lua5.2 lua5.2
  need_file /usr/include/lua5.2/lua.h liblua5.2-dev
  need_cmd lua5.1 lua5.1
  need_file /usr/include/lua5.1/lua.h liblua5.1-0-dev
  need_luajit
  # The host examples (wrk's target is HAProxy, asked for above).
  need_cmd wrk wrk
  need_cmd sysbench sysbench
  need_cmd busted lua-busted
  need_file /usr/share/lua/5.4/cqueues.lua lua-cqueues
  need_cmd luarocks luarocks
  need_cmd valgrind valgrind
  need_cmd cmake cmake
  need_cmd pkg-config pkg-config
  need_cmd luacheck lua-check
  need_cmd musl-gcc musl-tools
fi

# The musl check of make test builds Lua from Debian's source of lua5.4
# (apt-get source), which needs deb-src entries: when apt knows no source
# of lua5.4, add one beside each deb entry, in a sources file of our own.
add_deb_src() {
  apt-cache showsrc lua5.4 2>/dev/null | grep -q '^Package: lua5.4$' && return 0
  f=/etc/apt/sources.list.d/threadlocal-deb-src
  echo "deps: adding deb-src entries (for lua5.4's source) in $f.sources and $f.list"
  # shellcheck disable=SC2094  # the loop skips the file it writes
  for s in /etc/apt/sources.list.d/*.sources; do
    [ "$s" != "$f.sources" ] && [ -f "$s" ] && sed 's/^Types:.*/Types: deb-src/' "$s" && echo
  done >"$f.sources"
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    sed -n 's/^deb /deb-src /p' >"$f.list"
  apt-get update -qq || echo "deps: apt-get update failed: the musl check will skip" >&2
}
if [ "$what" = test ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  add_deb_src
fi

[ -z "$missing" ] && exit 0

if [ "${DEPS_DRY_RUN:-0}" = 1 ]; then
  command -v "${DEPS_APT_GET:-apt-get}" >/dev/null 2>&1 && keep_installed
  echo "deps: would install:$missing"
  exit 0
fi

# go_on WHY: says what is missing and lets make go on without it.
go_on() {
  echo "deps: $1; missing:$lacking" >&2
  echo "deps: (Debian packages:$missing)" >&2
  case $what in
    test) echo "deps: make test goes on and skips the checks that need them" >&2 ;;
    *) echo "deps: make $what goes on without them" >&2 ;;
  esac
  exit 0
}

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  go_on "not installing (that needs root and apt-get)"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || go_on "apt-get update failed"
keep_installed
[ -z "$missing" ] && go_on "nothing left to install without removing a package"
echo "deps: installing from Debian:$missing"
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends --no-remove $missing >/dev/null ||
  go_on "apt-get install failed"
echo "deps: done"
