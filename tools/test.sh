#!/bin/sh
# make test: every suite on every Lua here, as TAP lines, in two lanes at
# once; ends with "N passed, N failed, N skipped" and fails if any failed.
#   sh tools/test.sh quick   the Lua 5.4 specs and C API test, no sanitizer
# A check whose tool is missing prints "skip - NAME: why".  spec/README.md
# says what each section covers.
set -u
cd "$(dirname "$0")/.." || exit 1

LUAS=${LUAS:-"lua5.4 lua5.3 lua5.2 lua5.1 luajit"}
STRESS_OPS=${STRESS_OPS:-20000} # per thread, 8 threads; make check raises it
export STRESS_OPS
CHURN_THREADS=${CHURN_THREADS:-100000}
CC=${CC:-cc}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
VALGRIND="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite"
out=build/test
rm -rf "$out" && mkdir -p "$out"
start=$(date +%s)
busted=$(command -v busted)
results=/dev/null # each section records into a file of its own
status=0

# ---- Helpers --------------------------------------------------------------

# result OK|FAIL|SKIP NAME [LOG|WHY]: records one check.
result() {
  case $1 in
    OK) echo "ok - $2" >>"$results" ;;
    SKIP) echo "skip - $2: $3" >>"$results" ;;
    *) echo "not ok - $2" >>"$results"
      [ -f "${3:-}" ] && sed 's/^/#   /' "$3" | tail -n 40 >>"$results" ;;
  esac
}

# check NAME LOG CMD...: passes if CMD exits 0.
check() {
  name=$1 log=$2
  shift 2
  if "$@" >"$log" 2>&1; then result OK "$name"; else result FAIL "$name" "$log"; fi
}

# tool_check TOOL NAME LOG CMD...: check, or a skip when TOOL is missing.
tool_check() {
  if have "$1" --version; then shift; check "$@"; else result SKIP "$2" "$1 is not installed"; fi
}

# tap_run NAME LOG CMD...: records CMD's TAP lines as "NAME: ...".  With
# NAME "-" they are kept as they are (scripts that name their own lines,
# and exit 77 after "# skip NAME: why" when they cannot run).  A non-zero
# exit without a failed line fails too.
tap_run() {
  name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1
  status=$?
  if [ "$name" = - ]; then
    grep -E '^(ok|not ok|skip) - |^#' "$log" | grep -v '^# skip ' >>"$results"
    sed -n 's/^# skip \([^:]*\): \(.*\)/skip - \1: \2/p' "$log" | head -n 1 >>"$results"
    name=$sec
  else
    sed -n "s/^\(not ok\|ok\) [0-9]* *- /\1 - $name: /p" "$log" >>"$results"
    grep -E '^#|ERROR: |runtime error|==[0-9]+== ' "$log" | tail -n 40 >>"$results"
  fi
  if [ $status -ne 0 ] && [ $status -ne 77 ] && ! grep -q '^not ok' "$log"; then
    result FAIL "$name: exited with status $status" "$log"
  fi
}

# build NAME LOG MAKE-ARGS...: builds quietly; records a failure only.
build() {
  name=$1 log=$2
  shift 2
  make --no-print-directory "$@" >"$log" 2>&1 || { result FAIL "build: $name" "$log"; return 1; }
}

# specs NAME LUA CPATH [BUSTED-ARGS...]: the busted specs.
specs() {
  name=$1 lua=$2 cpath=$3
  shift 3
  TL_LUA="$lua" tap_run "$name" "$out/$name.tap" ${RUNNER:-} "$lua" "$busted" -o TAP \
    --lpath='spec/?.lua;lua/?.lua' --cpath="$cpath/?.so" "$@"
}

have() { "$@" >/dev/null 2>&1; }
incdir() { case "$1" in luajit) echo /usr/include/luajit-2.1 ;; *) echo "/usr/include/$1" ;; esac; }
has_lua() { have "$1" -v && [ -f "$(incdir "$1")/lua.h" ]; }
can_build() { # FLAGS: the compiler builds and runs a program with FLAGS
  d=$(mktemp -d "$out/probe.XXXXXX")
  printf 'int main(void) { return 0; }\n' >"$d/p.c"
  $CC $1 -o "$d/p" "$d/p.c" >/dev/null 2>&1 && "$d/p"
}

# section NAME FUNC [ARGS...]: one section into its own file, then printed
# whole with its duration.
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

# ---- Sections -------------------------------------------------------------

# all_specs NAME LUA CPATH [TAGS]: the specs but those tagged TAGS.  The
# #gcstorm ones run a collection per allocation, so they run apart, in a
# process whose heap holds no other spec's garbage: 3 times faster.
all_specs() {
  specs "$1" "$2" "$3" --exclude-tags="gcstorm${4:+,$4}" spec
  specs "$1 gcstorm" "$2" "$3" --tags=gcstorm ${4:+--exclude-tags=$4} spec
}

# lua_suite LUA [TAGS]: build warning-free, the C API test, the specs.
lua_suite() {
  lua=$1
  if ! has_lua "$lua"; then result SKIP "$lua" "interpreter or headers missing"; return; fi
  build "$lua: module, spec helper and C API test warning-free with gcc" "$out/$lua-build.log" \
    LUA="$lua" BUILD="build/$lua" CFLAGS="-O2 -g -Werror" helper || return
  tap_run "$lua" "$out/$lua-capi.tap" "build/$lua/capi_test"
  if have "$lua" "$busted" --version; then all_specs "$lua" "$lua" "build/$lua" "${2:-}"
  else result SKIP "$lua: specs" "busted is not installed for $lua"; fi
}

# Sanitizers: AddressSanitizer with leak checks and UBSan over the C tests
# and the specs; out of memory where strings and LuaJIT closures differ.
asan() {
  if ! can_build "$SAN"; then result SKIP "asan+ubsan" "$CC cannot build with $SAN"; return; fi
  build "asan+ubsan" "$out/asan-build.log" LUA=lua5.4 BUILD=build/asan \
    CFLAGS="-O1 -g -Werror $SAN" LDFLAGS="$SAN" helper reliability || return
  for t in capi fork oom hostile names; do tap_run "asan+ubsan" "$out/asan-$t.tap" "build/asan/${t}_test"; done
  all_specs "asan+ubsan specs" build/asan/spec_host build/asan
  for lua in lua5.1 luajit; do
    has_lua "$lua" && build "asan+ubsan $lua" "$out/asan-$lua.log" LUA="$lua" BUILD="build/asan-$lua" \
      CFLAGS="-O1 -g -Werror $SAN" LDFLAGS="$SAN" "build/asan-$lua/oom_test" &&
      tap_run "asan+ubsan $lua" "$out/asan-$lua-oom.tap" "build/asan-$lua/oom_test"
  done
}

tsan() {
  if ! can_build -fsanitize=thread; then result SKIP "tsan" "$CC cannot build with -fsanitize=thread"; return; fi
  build tsan "$out/tsan-build.log" LUA=lua5.4 BUILD=build/tsan CFLAGS="-O1 -g -Werror -fsanitize=thread" \
    LDFLAGS="-fsanitize=thread" build/tsan/stress_test &&
    tap_run tsan "$out/tsan.tap" build/tsan/stress_test "$STRESS_OPS"
}

reliability() {
  build reliability "$out/reliability-build.log" LUA=lua5.4 BUILD=build/lua5.4 \
    CFLAGS="-O2 -g -Werror" reliability || return
  tap_run lua5.4 "$out/churn.tap" build/lua5.4/churn_test "$CHURN_THREADS"
  for t in hostile names; do tap_run lua5.4 "$out/$t.tap" "build/lua5.4/${t}_test"; done
}

# valgrind LUA ARGS...: specs under memcheck.  ASan runs those tagged
# #gcstorm (a finalizer in every allocation) and #fuzz: here they take
# minutes.  #nogrind ones measure memory or start processes of their own.
valgrind_specs() {
  lua=$1
  shift
  if ! have valgrind --version || [ ! -f "build/$lua/threadlocal.so" ]; then
    result SKIP "valgrind $lua" "valgrind or build/$lua is missing"
    return
  fi
  (export TL_SMALL=1 RUNNER="$VALGRIND" && specs "valgrind $lua" "$lua" "build/$lua" "$@")
}

# The demo: each thread prints its own number, and the turns interleave.
demos() {
  build examples "$out/examples.log" LUA=lua5.4 BUILD=build/lua5.4 examples || return
  check "demo: threads A and B interleave, each with its own number" "$out/demo.log" \
    sh -c 'build/lua5.4/demo_host examples/demo.lua | tee /dev/stderr | awk "
      /^Thread A has number 100\$/ { a++; last_a = NR } /^Thread B has number 200\$/ { b++; if (!first_b) first_b = NR }
      END { exit !(a == 3 && b == 3 && NR == 6 && first_b < last_a) }"'
  check "pool host: per-worker context from C, requests handed from the acceptor" "$out/pool.log" \
    sh -c 'build/lua5.4/pool_host examples | tee /dev/stderr | grep -q "^ok: only worker [0-9] switched"'
  check "headers host: C reads a script's nested tables, walks the fields, sets a table the script reads" \
    "$out/headers.log" sh -c 'build/lua5.4/headers_host | grep "^ok: C read req.headers.host=example.org, x-id=7, req.path\[1\]=a; fields: method headers{} path{}; the script read the reply: 200 text/plain$"'
}

# Real Lanes, on each Lua whose interpreter requires "lanes".
lanes_real() {
  found=
  for lua in $LUAS; do
    if [ -f "build/$lua/threadlocal.so" ] && have "$lua" -e 'require "lanes"'; then
      found=1
      specs "$lua real Lanes" "$lua" "build/$lua" spec/lanes_real.lua
    fi
  done
  [ -n "$found" ] || result SKIP "real Lanes" "require \"lanes\" fails on every Lua here"
}

# ---- The run --------------------------------------------------------------

summary() {
  cat "$out"/section-*.tap >"$out/results.tap"
  passed=$(grep -c '^ok' "$out/results.tap")
  failed=$(grep -c '^not ok' "$out/results.tap")
  echo "# make test took $(($(date +%s) - start)) s"
  echo "$passed passed, $failed failed, $(grep -c '^skip' "$out/results.tap") skipped"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit
}

missing=
have "$CC" --version || missing="$missing, a C compiler ($CC)"
has_lua lua5.4 || missing="$missing, lua5.4 or its headers"
have lua5.4 "$busted" --version || missing="$missing, busted"
if [ -n "$missing" ]; then
  section setup result FAIL "the Lua 5.4 suite can run (missing: ${missing#, })"
  summary
fi

if [ "${1:-}" = quick ]; then
  export TL_SMALL=1
  section lua5.4 lua_suite lua5.4 nogrind
  summary
fi

# Two lanes of about equal length.  Sections that share a build directory
# stay in one lane, after the section that builds it.  TL_SMALL runs the
# second-opinion passes shorter (spec/support.lua).
(
  section lua5.4 lua_suite lua5.4
  section reliability reliability
  section valgrind valgrind_specs lua5.4 --exclude-tags=nogrind,gcstorm,fuzz spec
  section demos demos
  section symbols tap_run - "$out/symbols.tap" sh tools/symbols_test.sh
  section dist tap_run - "$out/dist.tap" sh tools/dist_test.sh
  section consumer tap_run - "$out/consumer.tap" sh tools/consumer_test.sh "$out/consumer"
  section luacheck tool_check luacheck "luacheck: no warning in any Lua file or rockspec" \
    "$out/luacheck.log" luacheck --no-color -q .
  section embedded check "src/tl_embedded.h is what tools/embed.sh makes (else: make embed)" \
    "$out/embed.log" sh -c 'sh tools/embed.sh | diff src/tl_embedded.h -'
  section deps tap_run - "$out/deps.tap" sh tools/deps_test.sh
  section doc tap_run - "$out/doc.tap" sh tools/doc_test.sh "$out/doc"
  section clang tool_check clang "clang: module, helpers and examples build warning-free" \
    "$out/clang.log" make --no-print-directory LUA=lua5.4 BUILD=build/clang CC=clang \
    CFLAGS="-O2 -Werror" helper examples
  export TL_SMALL=1
  case " $LUAS " in *" luajit "*) section luajit lua_suite luajit ;; esac
  for ex in wrk sysbench nginx; do section "$ex" tap_run - "$out/$ex.tap" sh "examples/$ex/run.sh"; done
  section musl tap_run - "$out/musl.tap" sh tools/musl_test.sh
) &
(
  export TL_SMALL=1
  section asan asan
  section tsan tsan
  for lua in $LUAS; do
    case $lua in lua5.4 | luajit) continue ;; esac
    section "$lua" lua_suite "$lua"
    [ "$lua" = lua5.3 ] && section haproxy tap_run - "$out/haproxy.tap" sh examples/haproxy/run.sh
    [ "$lua" = lua5.1 ] && section valgrind-lua5.1 valgrind_specs lua5.1 \
      --filter='string read while finalizers' spec/shared_spec.lua
  done
) &
wait
section lanes lanes_real
summary
