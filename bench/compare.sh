#!/bin/sh
# make bench BASE=<rev>: builds the module of git revision REV under
# build/base/<commit>/ with the make variables of this run, then compares
# it with this tree's build (bench/compare.lua).
#
#   sh bench/compare.sh REV LUA BUILD ROUNDS MAKE [VAR=value ...]
#
# MAKE and the variables build the base: its threadlocal.so and tlbench.so
# (which holds its copy of the C API).  Both builds share this tree's
# bench/bench.lua, floor.so and tlhelper.so, so only the module differs.
set -eu
rev=$1 lua=$2 build=$3 rounds=$4
shift 4

commit=$(git rev-parse --verify -q "$rev^{commit}") ||
  { echo "bench: BASE=$rev is not a git revision of this checkout" >&2; exit 2; }
short=$(git rev-parse --short=12 "$commit")
dir=build/base/$short
if [ ! -d "$dir" ]; then
  mkdir -p build/base
  tmp=$(mktemp -d build/base/.extract.XXXXXX)
  git archive "$commit" | tar -x -C "$tmp"
  mv "$tmp" "$dir" # whole or not at all, if interrupted
fi

# The base keeps its build apart per interpreter; it is rebuilt whole when
# the variables differ from those of its last build (make sees files only).
out=build/$lua
stamp=$dir/$out/.make-args
always=
[ "$(cat "$stamp" 2>/dev/null)" = "$*" ] || always=-B
rm -f "$stamp" # until this build is whole
"$@" $always -C "$dir" BUILD="$out" "$out/threadlocal.so" "$out/tlbench.so"
printf '%s\n' "$*" >"$stamp"

echo "bench: this tree against $rev ($short), $lua"
exec "$lua" bench/compare.lua "$lua" "$build" "$dir/$out" "$rev ($short)" "$rounds"
