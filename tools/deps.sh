#!/bin/sh
# Installs from Debian's packages what `make demo` or `make test` needs and
# this machine lacks.  Usage: sh tools/deps.sh demo|test|bench
set -u
what=${1:-test}
missing=""

need_cmd() { # command package
  command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need_file() { # file package
  [ -e "$1" ] || missing="$missing $2"
}

need_cmd cc gcc
need_cmd lua5.4 lua5.4
need_file /usr/include/lua5.4/lua.h liblua5.4-dev
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
fi

[ -z "$missing" ] && exit 0

echo "deps: installing from Debian:$missing"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: run as root on Debian, or install these packages yourself:$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || exit 1
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null || exit 1
echo "deps: done"
