#!/bin/sh
# Installs from Debian's packages what `make demo` or `make test` needs and
# this machine lacks.  Usage: sh tools/deps.sh demo|test|bench
# When it cannot (not root, no apt-get, apt-get failed), it says what is
# missing and exits 0: make test then skips the checks whose tools are
# missing, and fails only if the Lua 5.4 suite cannot run.
set -u
what=${1:-test}
missing=""  # Debian packages
lacking=""  # the commands and files they provide

need_cmd() { # command package
  command -v "$1" >/dev/null 2>&1 || { missing="$missing $2"; lacking="$lacking $1"; }
}
need_file() { # file package
  [ -e "$1" ] || { missing="$missing $2"; lacking="$lacking $1"; }
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
  need_cmd luajit luajit
  need_file /usr/include/luajit-2.1/lua.h libluajit-5.1-dev
  need_cmd busted lua-busted
  need_file /usr/share/lua/5.4/cqueues.lua lua-cqueues
  need_cmd luarocks luarocks
  need_cmd valgrind valgrind
  need_cmd cmake cmake
  need_cmd pkg-config pkg-config
  need_cmd luacheck lua-check
fi

[ -z "$missing" ] && exit 0

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
echo "deps: installing from Debian:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || go_on "apt-get update failed"
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null || go_on "apt-get install failed"
echo "deps: done"
