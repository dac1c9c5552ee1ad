#!/bin/sh
# Runs the sysbench example and checks it; prints TAP lines.
#
#   sh examples/sysbench/run.sh
#
# Builds threadlocal for LuaJIT (make LUA=luajit: sysbench embeds LuaJIT) and
# runs per_worker.lua with THREADS (4) workers for EVENTS (1000) events, the
# module found through LUA_CPATH; checks what the workers report against
# sysbench's own totals.  Nothing here uses the network.
# Exits 0 when every check passed, 1 when one failed, and 77 (after a line
# "# skip ...") when sysbench or the LuaJIT headers are missing.
# TL_CMODDIR=dir uses the threadlocal.so found there instead of building one.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
example=sysbench
# shellcheck source=examples/lib.sh
. "$root/examples/lib.sh"
SYSBENCH=${SYSBENCH:-sysbench}
THREADS=${THREADS:-4}
EVENTS=${EVENTS:-1000}

command -v "$SYSBENCH" >/dev/null 2>&1 || skip "$SYSBENCH is not installed"

tmp=''
# shellcheck disable=SC2317  # run by the trap
cleanup() { [ -n "$tmp" ] && rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tl-sysbench.XXXXXX") || exit 1

luajit_module "$tmp/build.log" "$SYSBENCH"

# --time=0: the run ends after EVENTS events, whatever they take; timeout
# bounds a stuck one.
(cd "$here" && LUA_CPATH="$cmoddir/?.so;;" timeout 120 "$SYSBENCH" per_worker.lua \
  --threads="$THREADS" --events="$EVENTS" --time=0 run) >"$tmp/sysbench.out" 2>&1
check $? "$SYSBENCH runs per_worker.lua with $THREADS workers and $EVENTS events" "$tmp/sysbench.out"

total=$(sed -n 's/^ *total number of events: *\([0-9][0-9]*\)$/\1/p' "$tmp/sysbench.out")
# One line per worker: index seen id events served wrong.
awk -v threads="$THREADS" '
  $1 == "sysbench-worker" {
    for (k = 2; k <= NF; k++) { split($k, kv, "="); v[kv[1]] = kv[2] }
    workers++
    sum += v["events"]
    if (v["served"] != v["events"] || v["wrong"] != 0) wrong++
    if (v["seen"] != v["index"]) lost++
    if (!(v["id"] in ids)) distinct++
    ids[v["id"]] = 1
    printf "# worker %d: threadlocal.id %s, %d events, %d served in fresh states\n", v["index"], v["id"], v["events"], v["served"] >"/dev/stderr"
  }
  $1 == "sysbench-main" {
    for (k = 2; k <= NF; k++) { split($k, kv, "="); m[kv[1]] = kv[2] }
    main = (m["index"] == 1000 && m["events"] == 0 && !(m["id"] in ids)) ? 1 : 0
  }
  END {
    printf "workers=%d sum=%d wrong=%d lost=%d distinct=%d main=%d\n",
      workers, sum, wrong, lost, distinct, main
  }' "$tmp/sysbench.out" >"$tmp/vars" 2>"$tmp/summary"
workers=0 sum=-1 wrong=-1 lost=-1 distinct=-1 main=0
# shellcheck disable=SC1091  # written by the awk above: numbers only
. "$tmp/vars"
sort "$tmp/summary"
echo "# sysbench counted ${total:-no} events; the workers' shared local counted $sum"
[ "$workers" = "$THREADS" ] && [ "$sum" = "${total:-x}" ] && [ "$sum" = "$EVENTS" ]
check $? "the workers' counts in the shared local add up to sysbench's total of $EVENTS events" "$tmp/sysbench.out"
[ "$wrong" = 0 ] && [ "$workers" -gt 0 ]
check $? "each event's fresh state saw its worker's fields: the same index and count" "$tmp/sysbench.out"
[ "$lost" = 0 ] && [ "$distinct" = "$THREADS" ]
check $? "each worker kept its own index from the defaults on, on its own thread" "$tmp/sysbench.out"
[ "$main" = 1 ]
check $? "the main state's fields on the main thread are no worker's" "$tmp/sysbench.out"
if grep -E -q 'FATAL|PANIC|traceback|\.lua:[0-9]+:' "$tmp/sysbench.out"; then
  check 1 "$SYSBENCH printed no Lua error" "$tmp/sysbench.out"
else
  check 0 "$SYSBENCH printed no Lua error"
fi
exit $failed
