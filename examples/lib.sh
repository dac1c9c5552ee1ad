# What the example checks (examples/*/run.sh) share; sourced, not run.
# Each run.sh sets `example` (its TAP prefix) before sourcing it.

failed=0
# check STATUS DESCRIPTION [FILE]: one TAP line; on failure, FILE's tail as comments.
check() {
  if [ "$1" = 0 ]; then
    echo "ok - $example: $2"
  else
    echo "not ok - $example: $2"
    failed=1
    if [ -n "${3:-}" ] && [ -f "$3" ]; then tail -n 20 "$3" | sed 's/^/#   /'; fi
  fi
}

# skip WHY: the example cannot run here; tools/test.sh prints "skip - ...".
skip() {
  echo "# skip $example: $1"
  exit 77
}

# A port of 127.0.0.1 that /proc/net shows unused.
random_port() {
  echo $(($(od -An -N2 -tu2 /dev/urandom) % 30000 + 20000))
}
port_in_use() {
  hex=$(printf '%04X' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ":$hex "
}
free_port() {
  while :; do
    p=$(random_port)
    port_in_use "$p" || break
  done
  echo "$p"
}

# wait_http URL EXPECTED PID: up to 100 polls, 0.1 s apart, while PID lives,
# until URL answers EXPECTED.
wait_http() {
  tries=0
  while [ $tries -lt 100 ] && kill -0 "$3" 2>/dev/null; do
    [ "$(curl -s --max-time 2 "$1")" = "$2" ] && return 0
    sleep 0.1
    tries=$((tries + 1))
  done
  return 1
}

# stop_pid PID [SIGNAL]: the signal (TERM), up to 10 s to exit, then KILL;
# waits for it.
stop_pid() {
  kill "-${2:-TERM}" "$1" 2>/dev/null
  tries=0
  while kill -0 "$1" 2>/dev/null && [ $tries -lt 100 ]; do
    sleep 0.1
    tries=$((tries + 1))
  done
  kill -0 "$1" 2>/dev/null && kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# build_luajit ROOT LOG: builds threadlocal for LuaJIT (make LUA=luajit) into
# ROOT/build/luajit, against LUAJIT_INCDIR (default /usr/include/luajit-2.1).
build_luajit() {
  incdir=${LUAJIT_INCDIR:-/usr/include/luajit-2.1}
  [ -f "$incdir/lua.h" ] || skip "the LuaJIT headers ($incdir/lua.h) are missing"
  make -C "$1" --no-print-directory LUA=luajit BUILD=build/luajit LUA_INCDIR="$incdir" \
    build/luajit/threadlocal.so >"$2" 2>&1
}

# luajit_module LOG HOST: sets cmoddir to a threadlocal.so built for the
# LuaJIT that HOST embeds (TL_CMODDIR when given), with a TAP line.
luajit_module() {
  if [ -n "${TL_CMODDIR:-}" ]; then
    cmoddir=$TL_CMODDIR
  else
    cmoddir=$root/build/luajit
    build_luajit "$root" "$1"
    check $? "threadlocal builds for LuaJIT, the Lua that $2 embeds" "$1"
  fi
  [ -f "$cmoddir/threadlocal.so" ] || { check 1 "$cmoddir/threadlocal.so exists"; exit 1; }
}
