#!/bin/sh
# Checks the choices of tools/deps.sh in a dry run (DEPS_DRY_RUN=1) over
# package lists: no command, file or package of this machine is consulted,
# and nothing is installed.  Prints TAP lines "ok - deps: ...".
set -u
cd "$(dirname "$0")/.." || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tl-deps.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
failed=0

# A PATH with only what deps.sh itself runs: every command it asks for is
# missing there.
mkdir -p "$tmp/bin" "$tmp/root/usr/lib/nginx/modules"
for c in sh sed tr grep id cat; do
  ln -s "$(command -v "$c")" "$tmp/bin/$c" || exit 1
done
: >"$tmp/root/usr/lib/nginx/modules/ngx_http_lua_module.so"

# A stand-in apt-get: `-s install PKG...` lists PKG... as installed and, per
# rule "a+b:gone" of FAKE_REMOVE, removes gone when every one of a, b is asked.
cat >"$tmp/apt-get" <<'FAKE'
#!/bin/sh
shift 2
args=" $* "
for p in "$@"; do case $p in -*) ;; *) echo "Inst $p (1 fake [all])" ;; esac; done
for rule in ${FAKE_REMOVE:-}; do
  all=1
  for p in $(echo "${rule%%:*}" | tr '+' ' '); do
    case $args in *" $p "*) ;; *) all=0 ;; esac
  done
  [ $all = 1 ] && echo "Remv ${rule#*:} [1]"
done
exit 0
FAKE
chmod +x "$tmp/apt-get"

# dry INSTALLED ROOT [FAKE_REMOVE]: the dry run's output, stderr included.
dry() {
  PATH="$tmp/bin" DEPS_DRY_RUN=1 DEPS_INSTALLED="$1" DEPS_ROOT="$2" DEPS_APT_GET="$tmp/apt-get" \
    FAKE_REMOVE="${3:-}" sh tools/deps.sh test 2>&1
}

# check NAME OUTPUT WORDS...: each word +pkg must be in the line "would
# install", each -pkg must not; a word "msg:text" must be in OUTPUT.
check() {
  name=$1 output=$2
  shift 2
  line=" $(echo "$output" | sed -n 's/^deps: would install://p') "
  ok=1
  for w in "$@"; do
    case $w in
      +*) case $line in *" ${w#+} "*) ;; *) ok=0 ;; esac ;;
      -*) case $line in *" ${w#-} "*) ok=0 ;; esac ;;
      msg:*) case $output in *"${w#msg:}"*) ;; *) ok=0 ;; esac ;;
    esac
  done
  if [ $ok = 1 ]; then
    echo "ok - deps: $name"
  else
    echo "not ok - deps: $name"
    echo "$output" | sed 's/^/#   /'
    failed=1
  fi
}

out=$(dry "" /nonexistent)
check "a fresh machine gets OpenResty's LuaJIT, nginx's Lua module, wrk and sysbench" "$out" \
  +luajit2 +libluajit2-5.1-dev +libnginx-mod-http-lua +wrk +sysbench +lua5.4 -luajit -libluajit-5.1-dev

out=$(dry "luajit libluajit-5.1-2 libluajit-5.1-dev" /nonexistent)
check "a machine with Debian's LuaJIT keeps it and gets no nginx Lua module, and is told why" "$out" \
  +luajit +libluajit-5.1-dev +wrk +sysbench -luajit2 -libluajit2-5.1-dev -libnginx-mod-http-lua \
  "msg:not asking for libnginx-mod-http-lua"

out=$(dry "libluajit-5.1-2" /nonexistent)
check "Debian's LuaJIT library alone (as wrk brings it) keeps Debian's set" "$out" \
  +luajit +libluajit-5.1-dev -luajit2 -libnginx-mod-http-lua

out=$(dry "nginx libnginx-mod-http-lua lua-resty-core libluajit2-5.1-2" "$tmp/root")
check "a machine with nginx's Lua module gets OpenResty's luajit command and headers, never Debian's" "$out" \
  +luajit2 +libluajit2-5.1-dev +wrk -luajit -libluajit-5.1-dev -libnginx-mod-http-lua

out=$(dry "" /nonexistent "wrk:libfoo")
check "an install that would remove a package is left out, naming what it would remove" "$out" \
  -wrk +sysbench +luajit2 "msg:not installing wrk: it would remove libfoo"

out=$(dry "" /nonexistent "wrk+sysbench:libbar")
check "packages that would remove one only together are all left out" "$out" \
  -wrk -sysbench -luajit2 "msg:together they would remove libbar"

# removals, on what apt-get -s printed for libnginx-mod-http-lua on a Debian
# 12 machine with Debian's LuaJIT.
got=$(sed -n '/^removals()/,/^}/p' tools/deps.sh >"$tmp/fn.sh" && . "$tmp/fn.sh" && removals <<'APT'
NOTE: This is only a simulation!
Remv libluajit-5.1-dev [2.1.0~beta3+git20220320+dfsg-4.1+deb12u1]
Remv luajit [2.1.0~beta3+git20220320+dfsg-4.1+deb12u1]
Remv libluajit-5.1-2 [2.1.0~beta3+git20220320+dfsg-4.1+deb12u1]
Remv libluajit-5.1-common [2.1.0~beta3+git20220320+dfsg-4.1+deb12u1]
Inst libluajit2-5.1-common (2.1-20230119-1 Debian:12.15/oldstable [all])
Inst libnginx-mod-http-lua (1:0.10.23-1+deb12u1 Debian:12.15/oldstable [amd64])
Conf libnginx-mod-http-lua (1:0.10.23-1+deb12u1 Debian:12.15/oldstable [amd64])
APT
)
if [ "$got" = "libluajit-5.1-dev luajit libluajit-5.1-2 libluajit-5.1-common" ]; then
  echo "ok - deps: apt-get -s output names the packages an install would remove"
else
  echo "not ok - deps: apt-get -s output names the packages an install would remove"
  echo "#   got: $got"
  failed=1
fi
exit $failed
