#!/bin/sh
# Runs the nginx example and checks it; prints TAP lines.
#
#   sh examples/nginx/run.sh
#
# Builds threadlocal for LuaJIT (make LUA=luajit: nginx's Lua module embeds
# OpenResty's LuaJIT), copies it and tl_worker.lua, world-readable, into a
# fresh prefix (nginx's workers run as nobody when started as root), starts
# nginx there on a free port of 127.0.0.1 with 2 workers and a thread pool of
# 8 threads, and sends BATCHES x BATCH (3 x 1000) requests from concurrent
# clients, reloading nginx between batches.  Each request runs a task of
# tl_worker.lua through ngx.run_worker_thread.  Then stops nginx and checks
# the answers and nginx's error log.
# Exits 0 when every check passed, 1 when one failed, and 77 (after a line
# "# skip ...") when nginx, its Lua module (libnginx-mod-http-lua), curl or
# the LuaJIT headers are missing.
# NGINX_BIN (the command), NGINX_MODULES (the directory of ngx_http_lua_module.so,
# /usr/lib/nginx/modules) and NGINX_LUA_PATH (more of lua_package_path) say
# where nginx's set is; TL_CMODDIR=dir uses the threadlocal.so found there.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
example=nginx
# shellcheck source=examples/lib.sh
. "$root/examples/lib.sh"
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}
BATCHES=${BATCHES:-3}
BATCH=${BATCH:-1000}
total=$((BATCHES * BATCH))

[ -x "$NGINX_BIN" ] || skip "nginx is not installed"
[ -f "$NGINX_MODULES/ngx_http_lua_module.so" ] ||
  skip "nginx's Lua module is not installed ($NGINX_MODULES/ngx_http_lua_module.so: libnginx-mod-http-lua)"
command -v curl >/dev/null 2>&1 || skip "curl is not installed"

tmp='' pid='' clients=''
# shellcheck disable=SC2317  # run by the trap
cleanup() {
  for c in $clients; do kill "$c" 2>/dev/null; wait "$c" 2>/dev/null; done
  [ -n "$pid" ] && stop_pid "$pid" QUIT
  [ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tl-nginx.XXXXXX") || exit 1

luajit_module "$tmp/build.log" "nginx's Lua module"

# The prefix: what nginx's workers read must be world-readable.
mkdir -p "$tmp/prefix/logs" "$tmp/prefix/lua" "$tmp/prefix/tmp"
cp "$cmoddir/threadlocal.so" "$here/tl_worker.lua" "$tmp/prefix/lua/"
chmod 755 "$tmp" "$tmp/prefix" "$tmp/prefix/lua"
chmod 644 "$tmp/prefix/lua/"*
prefix=$tmp/prefix
log=$prefix/logs/error.log

start_nginx() {
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$(free_port)
    sed -e "s|@PORT@|$port|g" -e "s|@MODULES@|$NGINX_MODULES|g" \
      -e "s|@LUA_PATH@|$prefix/lua/?.lua${NGINX_LUA_PATH:+;$NGINX_LUA_PATH}|g" \
      -e "s|@LUA_CPATH@|$prefix/lua/?.so|g" "$here/nginx.conf.in" >"$prefix/nginx.conf"
    echo "# attempt $attempt: port $port" >>"$tmp/nginx.out"
    "$NGINX_BIN" -p "$prefix/" -c "$prefix/nginx.conf" -e "$log" -g 'daemon off;' >>"$tmp/nginx.out" 2>&1 &
    pid=$!
    url="http://127.0.0.1:$port"
    tries=0
    while [ $tries -lt 100 ] && kill -0 "$pid" 2>/dev/null; do
      case $(curl -s --max-time 2 "$url/ready") in [0-9]*) return 0 ;; esac
      sleep 0.1
      tries=$((tries + 1))
    done
    stop_pid "$pid" QUIT
    pid=''
  done
  return 1
}
if ! start_nginx; then
  cat "$log" >>"$tmp/nginx.out" 2>/dev/null
  check 1 "nginx starts with its Lua module and answers on 127.0.0.1" "$tmp/nginx.out"
  exit 1
fi
check 0 "nginx starts with 2 workers, a thread pool of 8 threads and its Lua module, on 127.0.0.1"

# reload: SIGHUP, then up to 100 polls until a worker that is not one of
# the old ones answers (the old ones close their sockets and finish).
old_pids=''
reload() {
  for _ in 1 2 3 4 5 6 7 8; do
    w=$(curl -s --max-time 2 "$url/ready")
    case " $old_pids " in *" $w "*) ;; *) old_pids="$old_pids $w" ;; esac
  done
  kill -HUP "$pid"
  tries=0
  while [ $tries -lt 100 ] && kill -0 "$pid" 2>/dev/null; do
    w=$(curl -s --max-time 2 "$url/ready")
    case $w in
      [0-9]*) case " $old_pids " in *" $w "*) ;; *) return 0 ;; esac ;;
    esac
    sleep 0.1
    tries=$((tries + 1))
  done
  return 1
}

mkdir "$tmp/count"
b=1
reloads=0
while [ $b -le "$BATCHES" ]; do
  if [ $b -gt 1 ]; then
    reload && reloads=$((reloads + 1))
  fi
  curl -sS --max-time 60 --parallel --parallel-immediate --parallel-max 32 \
    -o "$tmp/count/$b-#1" "$url/count?i=[1-$BATCH]" 2>"$tmp/curl-$b.err"
  echo $? >"$tmp/curl-$b.status"
  b=$((b + 1))
done
find "$tmp/count" -type f -exec cat {} + >"$tmp/count.txt"
cat "$tmp"/curl-*.err >"$tmp/curl.err"
! grep -q -v '^0$' "$tmp"/curl-*.status
check $? "$total requests complete" "$tmp/curl.err"
[ "$reloads" = $((BATCHES - 1)) ]
check $? "nginx reloaded $((BATCHES - 1)) times between the batches, and new workers answered" "$tmp/nginx.out"

# Stop nginx (gracefully) before reading its log.
stop_pid "$pid" QUIT
pid=''

# One line per answer: count pid=P id=I n=N local=ok|wrong.  Per pool thread
# (P, I), the values of N must be exactly 1..n: n answers, none twice.
awk '
  $1 == "count" && NF == 5 {
    split($2, a, "="); p = a[2]; split($3, a, "="); id = a[2]
    split($4, a, "="); n = a[2]; split($5, a, "="); l = a[2]
    t = p "/" id
    lines++
    if (n !~ /^[0-9]+$/ || n < 1) bad++
    if ((t, n) in seen) dups++
    seen[t, n] = 1
    if (!(t in cnt)) threads++
    if (!(p in pids)) procs++
    pids[p] = 1
    cnt[t]++
    if (n + 0 > max[t] + 0) max[t] = n + 0
    if (l != "ok") wrong++
    next
  }
  { bad++ }
  END {
    for (t in cnt) { gaps += max[t] - cnt[t]; sum += max[t] }
    printf "lines=%d threads=%d procs=%d sum=%d gaps=%d dups=%d bad=%d wrong=%d\n",
      lines, threads, procs, sum, gaps, dups, bad, wrong
  }' "$tmp/count.txt" >"$tmp/count.vars"
lines=0 threads=0 procs=0 sum=0 gaps=0 dups=0 bad=0 wrong=0
# shellcheck disable=SC1091  # written by the awk above: numbers only
. "$tmp/count.vars"
echo "# $lines answers of $total requests from $procs worker processes, on $threads pool threads; sum of the counters $sum; gaps $gaps, duplicates $dups, malformed lines $bad"
[ "$lines" = "$total" ] && [ "$bad" = 0 ]
check $? "every one of the $total requests got a well-formed answer" "$tmp/count.txt"
[ "$threads" -ge 2 ] && [ "$procs" -gt 2 ]
check $? "the tasks ran on several pool threads ($threads) of the workers before and after the reloads ($procs)"
[ "$gaps" = 0 ] && [ "$dups" = 0 ] && [ "$sum" = "$total" ] && [ "$lines" = "$total" ]
check $? "each pool thread's counter in the shared local ran 1..n over every VM, with no gap or duplicate, and the n add up to $total"
[ "$wrong" = 0 ] && [ "$lines" -gt 0 ]
check $? "each VM's Local always held the calling pool thread's fields, made on that thread"

if grep -E -q '\[(error|crit|alert|emerg)\]|traceback|\.lua:[0-9]+:' "$log"; then
  check 1 "nginx stopped; its error log has no Lua error" "$log"
else
  check 0 "nginx stopped; its error log has no Lua error"
fi
exit $failed
