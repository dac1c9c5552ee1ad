#!/bin/sh
# The documentation matches the module (tools/doccheck.lua): every name the
# module exposes has a heading in docs/manual.md and an annotation in types/,
# every export of src/threadlocal.h is in docs/c-api.md, the lua and c blocks
# of README.md and docs/*.md run or compile, README.md has at most 250
# lines, and relative links resolve.  Prints TAP lines "ok - doc: ...";
# exits 77 (after "skip - doc: ...") when lua5.4 or its headers are missing.
#   sh tools/doc_test.sh [DIR]   (scratch directory, default build/doc)
set -u
cd "$(dirname "$0")/.." || exit 1
dir=${1:-build/doc}
CC=${CC:-cc}
BUILD=build/lua5.4

if ! command -v lua5.4 >/dev/null 2>&1 || [ ! -f /usr/include/lua5.4/lua.h ]; then
  echo "skip - doc: lua5.4 or its headers are missing"
  exit 77
fi
rm -rf "$dir"
mkdir -p "$dir" || exit 1
if ! make --no-print-directory LUA=lua5.4 BUILD="$BUILD" >"$dir/build.log" 2>&1; then
  echo "not ok - doc: the module builds for the checks"
  sed 's/^/#   /' "$dir/build.log" | tail -n 20
  exit 1
fi
if command -v "$CC" >/dev/null 2>&1; then
  exec lua5.4 tools/doccheck.lua "$BUILD" "$dir" "$CC"
fi
echo "# doc: no C compiler ($CC): the c blocks are not compiled"
exec lua5.4 tools/doccheck.lua "$BUILD" "$dir"
