#!/bin/sh
# Runs the wrk example and checks it; prints TAP lines.
#
#   sh examples/wrk/run.sh
#
# Builds threadlocal for LuaJIT (make LUA=luajit: wrk embeds LuaJIT), starts
# HAProxy on a free port of 127.0.0.1 as the target, and runs wrk there for
# DURATION (1s) with THREADS (4) load threads and 8 connections, with
# per_thread.lua found through LUA_CPATH.  Checks what the script's done()
# reports against wrk's own request count, then stops HAProxy.
# Exits 0 when every check passed, 1 when one failed, and 77 (after a line
# "# skip ...") when wrk, HAProxy, curl or the LuaJIT headers are missing.
# TL_CMODDIR=dir uses the threadlocal.so found there instead of building one.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
example=wrk
# shellcheck source=examples/lib.sh
. "$root/examples/lib.sh"
WRK=${WRK:-wrk}
HAPROXY=${HAPROXY:-haproxy}
THREADS=${THREADS:-4}
DURATION=${DURATION:-1s}

for cmd in "$WRK" "$HAPROXY" curl; do
  command -v "$cmd" >/dev/null 2>&1 || skip "$cmd is not installed"
done

tmp='' pid=''
# shellcheck disable=SC2317  # run by the trap
cleanup() {
  [ -n "$pid" ] && stop_pid "$pid"
  [ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tl-wrk.XXXXXX") || exit 1

luajit_module "$tmp/build.log" "$WRK"

url=''
for attempt in 1 2 3 4 5 6 7 8; do
  port=$(free_port)
  sed "s|@PORT@|$port|g" "$here/haproxy.cfg.in" >"$tmp/haproxy.cfg"
  echo "# attempt $attempt: port $port" >>"$tmp/haproxy.log"
  "$HAPROXY" -db -f "$tmp/haproxy.cfg" >>"$tmp/haproxy.log" 2>&1 &
  pid=$!
  if wait_http "http://127.0.0.1:$port/" ok "$pid"; then
    url="http://127.0.0.1:$port/"
    break
  fi
  stop_pid "$pid"
  pid=''
done
[ -n "$url" ] || { check 1 "the target ($HAPROXY) answers on 127.0.0.1" "$tmp/haproxy.log"; exit 1; }

# wrk ends by itself after DURATION; timeout bounds a stuck run.
(cd "$here" && LUA_CPATH="$cmoddir/?.so;;" timeout 60 "$WRK" -t"$THREADS" -c$((THREADS * 2)) \
  -d"$DURATION" -s per_thread.lua "$url") >"$tmp/wrk.out" 2>&1
check $? "$WRK runs per_thread.lua with $THREADS load threads against 127.0.0.1" "$tmp/wrk.out"
stop_pid "$pid"
pid=''

grep '^#' "$tmp/wrk.out"
reported=$(sed -n 's/^ *\([0-9][0-9]*\) requests in .*/\1/p' "$tmp/wrk.out")
threads=0 requests=-1 sum=-2 wrong=-1 agree=-1 distinct=-1 inits=-1
vars=$(sed -n 's/^wrk-check //p' "$tmp/wrk.out")
for kv in $vars; do
  case $kv in
    threads=* | requests=* | sum=* | wrong=* | agree=* | distinct=* | inits=*)
      # Only names of this list, and digits only.
      case ${kv#*=} in '' | *[!0-9]*) ;; *) eval "$kv" ;; esac ;;
  esac
done
echo "# wrk reported ${reported:-no} requests; the load threads' Locals counted $sum"
[ "$threads" = "$THREADS" ] && [ "$requests" = "${reported:-x}" ] && [ "$sum" = "$requests" ] && [ "$sum" -gt 0 ]
check $? "the load threads' counts in their Locals add up to the $requests requests wrk reports" "$tmp/wrk.out"
[ "$wrong" = 0 ] && [ "$threads" -gt 0 ]
check $? "each state's Local saw one thread id in every response, its load thread's, not the main thread's where init() ran" "$tmp/wrk.out"
[ "$distinct" = "$THREADS" ]
check $? "the $THREADS load threads have distinct ids, none the main thread's" "$tmp/wrk.out"
[ "$agree" = "$THREADS" ]
check $? "on each load thread the shared local counted what the Local counted" "$tmp/wrk.out"
[ "$inits" = "$THREADS" ]
check $? "on the main thread the shared local saw all $THREADS states' init(), in one set of fields" "$tmp/wrk.out"
if grep -E -q 'PANIC|traceback|\.lua:[0-9]+:' "$tmp/wrk.out"; then
  check 1 "$WRK printed no Lua error" "$tmp/wrk.out"
else
  check 0 "$WRK printed no Lua error"
fi
exit $failed
