#!/bin/sh
# The exported functions, three ways: the THREADLOCAL_API declarations of
# src/threadlocal.h, the dynamic symbols the module defines (nm -D), and
# the function index of docs/c-api.md.  All three must name the same set.
# Prints TAP lines ("ok - symbols: ..."); exits 77 when it cannot run (no
# nm, or the module cannot be built).  Usage: sh tools/symbols_test.sh [SO]
# (default build/lua5.4/threadlocal.so, built if missing).
set -u
cd "$(dirname "$0")/.." || exit 1
so=${1:-build/lua5.4/threadlocal.so}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

if ! command -v nm >/dev/null 2>&1; then
  echo "skip - symbols: nm is not installed"
  exit 77
fi
if [ ! -f "$so" ] && ! make --no-print-directory LUA=lua5.4 BUILD="$(dirname "$so")" "$so" \
    >"$tmp/build.log" 2>&1; then
  echo "skip - symbols: cannot build $so"
  exit 77
fi

sed -n 's/^THREADLOCAL_API[^(]*[ *]\([A-Za-z_][A-Za-z0-9_]*\)(.*/\1/p' src/threadlocal.h |
  sort >"$tmp/header"
nm -D --defined-only "$so" | awk '$2 == "T" { print $3 }' | sort >"$tmp/nm"
# docs/c-api.md: the rows of its function index, "| `name` | ... |"
# shellcheck disable=SC2016 # backquotes in a sed pattern
sed -n '/^## Function index/,/^#/s/^| `\([a-z_][a-z0-9_]*\)` |.*/\1/p' docs/c-api.md 2>/dev/null |
  sort >"$tmp/docs"

failed=0
compare() { # NAME A B: A and B list the same names
  if [ -s "$2" ] && cmp -s "$2" "$3"; then
    echo "ok - symbols: $1 ($(wc -l <"$2") functions)"
  else
    echo "not ok - symbols: $1"
    diff "$2" "$3" | sed -n 's/^\([<>]\) /#   \1 /p'
    failed=1
  fi
}
compare "the THREADLOCAL_API functions of threadlocal.h are what nm -D shows the module exports" \
  "$tmp/header" "$tmp/nm"
compare "docs/c-api.md's function index lists every exported function" "$tmp/header" "$tmp/docs"
exit $failed
