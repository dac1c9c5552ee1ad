#!/bin/sh
# Runs the HAProxy example and checks it; prints TAP lines.
#
#   sh examples/haproxy/run.sh
#
# Builds threadlocal for the Lua that HAProxy embeds (make LUA=lua5.3), starts
# HAProxy in the foreground on a free port of 127.0.0.1 with 4 threads, sends
# BATCHES x BATCH requests (4 x 1000) from concurrent clients to the service of
# the shared Lua state and PAIRS (32) keep-alive connections to the services
# of both kinds of state, checks the answers, stops HAProxy and checks its log.
# Exits 0 when every check passed, 1 when one failed, and 77 (after a line
# "# skip ...") when haproxy, its Lua or curl is missing.
# TL_CMODDIR=dir uses the threadlocal.so found there instead of building one.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
HAPROXY=${HAPROXY:-haproxy}
BATCHES=${BATCHES:-4}
BATCH=${BATCH:-1000}
PAIRS=${PAIRS:-32}
total=$((BATCHES * BATCH))
example=haproxy
. "$root/examples/lib.sh"

for cmd in "$HAPROXY" curl; do
  command -v "$cmd" >/dev/null 2>&1 || skip "$cmd is not installed"
done
luaver=$("$HAPROXY" -vv 2>/dev/null | sed -n 's/^Built with Lua version : Lua \([0-9]\.[0-9]\).*/\1/p')
[ -n "$luaver" ] || skip "$HAPROXY is built without Lua"

tmp='' pid='' clients=''
# shellcheck disable=SC2317  # run by the trap
cleanup() {
  for c in $clients; do kill "$c" 2>/dev/null; wait "$c" 2>/dev/null; done
  [ -n "$pid" ] && stop_haproxy
  [ -n "$tmp" ] && rm -rf "$tmp"
}
stop_haproxy() {
  stop_pid "$pid"
  pid=''
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tl-haproxy.XXXXXX") || exit 1

# The module, for HAProxy's Lua.
if [ -n "${TL_CMODDIR:-}" ]; then
  cmoddir=$TL_CMODDIR
else
  cmoddir=$root/build/lua$luaver
  make -C "$root" --no-print-directory LUA="lua$luaver" BUILD="build/lua$luaver" \
    >"$tmp/build.log" 2>&1
  check $? "threadlocal builds for Lua $luaver, the Lua that $HAPROXY embeds" "$tmp/build.log"
fi
if [ ! -f "$cmoddir/threadlocal.so" ]; then
  check 1 "$cmoddir/threadlocal.so exists"
  exit 1
fi

# A port that /proc/net shows unused; HAProxy failing to bind it anyway (a
# race with another program) sends us to the next one.
url=''
for attempt in 1 2 3 4 5 6 7 8; do
  port=$(free_port)
  sed -e "s|@PORT@|$port|g" -e "s|@LUA_DIR@|$here|g" -e "s|@LUA_PATH@|$here/?.lua|g" \
    -e "s|@LUA_CPATH@|$cmoddir/?.so|g" "$here/haproxy.cfg.in" >"$tmp/haproxy.cfg"
  echo "# attempt $attempt: port $port" >>"$tmp/haproxy.log"
  "$HAPROXY" -db -f "$tmp/haproxy.cfg" >>"$tmp/haproxy.log" 2>&1 &
  pid=$!
  if wait_http "http://127.0.0.1:$port/ready" ready "$pid"; then
    url="http://127.0.0.1:$port"
    break
  fi
  stop_haproxy
done
if [ -z "$url" ]; then
  check 1 "$HAPROXY starts and answers on 127.0.0.1" "$tmp/haproxy.log"
  exit 1
fi
check 0 "$HAPROXY starts with nbthread 4, lua-load and lua-load-per-thread, and answers on 127.0.0.1"

# Waits for every curl started in the background ($clients); curl_status is
# the last non-zero exit status, or 0.
wait_clients() {
  curl_status=0
  for c in $clients; do
    wait "$c" || curl_status=$?
  done
  clients=''
}

# 1. The Local of the shared state: BATCHES concurrent clients, each with up
# to 32 connections in flight, send BATCH requests each to /count.
mkdir "$tmp/count"
b=1
while [ $b -le "$BATCHES" ]; do
  curl -sS --max-time 60 --parallel --parallel-immediate --parallel-max 32 \
    -o "$tmp/count/$b-#1" "$url/count?i=[1-$BATCH]" 2>"$tmp/curl-$b.err" &
  clients="$clients $!"
  b=$((b + 1))
done
wait_clients
find "$tmp/count" -type f -exec cat {} + >"$tmp/count.txt"
cat "$tmp"/curl-*.err >"$tmp/curl.err"
check $curl_status "$total requests to the shared state's service complete" "$tmp/curl.err"

# One line per answer: count thread=T id=I n=N foreign=F.  Per HAProxy thread
# T, the values of N must be exactly 1..n: n answers, none twice.
awk -v total="$total" '
  $1 == "count" && NF == 5 {
    split($2, a, "="); t = a[2]; split($3, a, "="); id = a[2]
    split($4, a, "="); n = a[2]; split($5, a, "="); f = a[2]
    lines++
    if (n !~ /^[0-9]+$/ || n < 1) bad++
    if ((t, n) in seen) dups++
    seen[t, n] = 1
    if (!(t in cnt)) threads++
    cnt[t]++
    if (n + 0 > max[t] + 0) max[t] = n + 0
    if (f != 0) foreign++
    if ((t in idof) && idof[t] != id) mismatch++
    if ((id in thof) && thof[id] != t) mismatch++
    idof[t] = id; thof[id] = t
    next
  }
  { bad++ }
  END {
    for (t in cnt) {
      gaps += max[t] - cnt[t]
      sum += max[t]
      printf "# thread %s (threadlocal.id %s): %d requests, highest count %d\n", t, idof[t], cnt[t], max[t] >"/dev/stderr"
    }
    printf "lines=%d threads=%d sum=%d gaps=%d dups=%d bad=%d foreign=%d mismatch=%d\n",
      lines, threads, sum, gaps, dups, bad, foreign, mismatch
  }' "$tmp/count.txt" >"$tmp/count.vars" 2>"$tmp/count.summary"
lines=0 threads=0 sum=0 gaps=0 dups=0 bad=0 foreign=0 mismatch=0
# shellcheck disable=SC1091  # written by the awk above: numbers only
. "$tmp/count.vars"
sort "$tmp/count.summary"
echo "# $lines answers of $total requests on $threads threads; sum of the counters $sum; gaps $gaps, duplicates $dups, malformed lines $bad"
[ "$lines" = "$total" ] && [ "$bad" = 0 ]
check $? "every one of the $total requests got a well-formed answer"
[ "$threads" -ge 2 ]
check $? "the requests ran on more than one HAProxy thread ($threads)"
[ "$gaps" = 0 ] && [ "$dups" = 0 ] && [ "$sum" = "$total" ] && [ "$lines" = "$total" ]
check $? "each thread's counter in the shared state's Local ran 1..n with no gap or duplicate, and the n add up to $total"
[ "$foreign" = 0 ] && [ "$lines" -gt 0 ]
check $? "no thread's cache in the Local ever held another thread's entry"
[ "$mismatch" = 0 ] && [ "$lines" -gt 0 ]
check $? "HAProxy threads and threadlocal.id() match one to one"

# 2. Shared locals across states: on one keep-alive connection (so on one
# HAProxy thread), a per-thread state stores a token that the shared state
# reads, then the shared state stores one that the per-thread state reads.
# PAIRS connections at once, each with its own key.
mkdir "$tmp/pairs"
i=1
while [ $i -le "$PAIRS" ]; do
  curl -sS --max-time 60 "$url/thread/set?key=c$i&token=$port.$i.a" "$url/shared/get?key=c$i" \
    "$url/shared/set?key=c$i&token=$port.$i.b" "$url/thread/get?key=c$i" \
    >"$tmp/pairs/$i" 2>>"$tmp/curl.err" &
  clients="$clients $!"
  i=$((i + 1))
done
wait_clients
check $curl_status "$PAIRS keep-alive connections to both kinds of state complete" "$tmp/curl.err"

# Each file: set (thread state), get (shared state), set (shared), get (thread),
# all on one HAProxy thread; each get reads the token just set by the other
# kind of state and sees no entry of another thread.  The mark of the state
# must be one per HAProxy thread for lua-load-per-thread, one in all for lua-load.
for f in "$tmp"/pairs/*; do
  i=${f##*/}
  awk -v key="c$i" -v a="$port.$i.a" -v b="$port.$i.b" '
    { for (k = 2; k <= NF; k++) { split($k, kv, "="); v[FNR, kv[1]] = kv[2] } }
    END {
      ok = NR == 4 && v[1, "thread"] != ""
      for (l = 1; l <= 4; l++) {
        if (v[l, "thread"] != v[1, "thread"] || v[l, "id"] != v[1, "id"] || v[l, "key"] != key) ok = 0
        marks = marks " " v[l, "state"] "=" v[l, "mark"]
      }
      if (v[1, "state"] != "thread" || v[1, "token"] != a) ok = 0
      if (v[2, "state"] != "shared" || v[2, "token"] != a || v[2, "writer"] != "thread" || v[2, "foreign"] != 0) ok = 0
      if (v[3, "state"] != "shared" || v[3, "token"] != b) ok = 0
      if (v[4, "state"] != "thread" || v[4, "token"] != b || v[4, "writer"] != "shared" || v[4, "foreign"] != 0) ok = 0
      print (ok ? "ok" : "bad"), v[1, "thread"], marks
    }' "$f"
done >"$tmp/pairs.txt"
pairs_ok=$(grep -c '^ok ' "$tmp/pairs.txt")
pair_threads=$(awk '$1 == "ok" { print $2 }' "$tmp/pairs.txt" | sort -u | wc -l)
echo "# $pairs_ok of $PAIRS connections passed the shared local between the states, on $pair_threads threads"
[ "$pairs_ok" = "$PAIRS" ]
check $? "per-thread states and the shared state see the same shared local on the same thread, both ways, and never another thread's entries" "$tmp/pairs.txt"
# thread -> mark of its per-thread state; the shared state's mark.
awk 'NF == 6 {
    for (k = 3; k <= NF; k++) {
      split($k, sm, "=")
      if (sm[1] == "thread") {
        if (($2 in tm) && tm[$2] != sm[2]) bad++
        tm[$2] = sm[2]; ts[sm[2]] = $2
      } else if (sm[1] == "shared") shared[sm[2]] = 1
      else bad++
    }
  }
  END {
    for (m in ts) { nt++; if (m in shared) bad++ }
    for (m in shared) ns++
    for (t in tm) if (ts[tm[t]] != t) bad++
    print (bad == 0 && ns == 1 && nt >= 1) ? "ok" : "bad", nt + 0, ns + 0
  }' "$tmp/pairs.txt" >"$tmp/marks.txt"
read -r marks_ok marks_thread marks_shared <"$tmp/marks.txt"
echo "# $marks_thread per-thread states seen (one per thread), $marks_shared shared state"
[ "$marks_ok" = ok ]
check $? "lua-load-per-thread gave each thread its own state, lua-load one state for all" "$tmp/pairs.txt"

# 3. Stop HAProxy by its pid; its log must show no Lua error.
stop_haproxy
if grep -E -i -q 'lua.*(error|traceback)|runtime error|traceback|\[ALERT\]' "$tmp/haproxy.log"; then
  check 1 "$HAPROXY stopped; its log has no Lua error" "$tmp/haproxy.log"
else
  check 0 "$HAPROXY stopped; its log has no Lua error"
fi

exit $failed
