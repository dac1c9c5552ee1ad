#!/bin/sh
# Builds the release the way a packager does, away from the checkout and
# offline: make dist into a scratch directory; the tarball unpacked, built
# and installed with make; the .src.rock built with luarocks into a tree.
# Lua requires the modules from each, a C host builds against the installed
# header through pkg-config, and every place that states the version agrees.
# Prints TAP lines ("ok - dist: ..."); exits 77 when it cannot run at all.
# Usage: sh tools/dist_test.sh
set -u
cd "$(dirname "$0")/.." || exit 1
CC=${CC:-cc}
failed=0

ok() { echo "ok - dist: $1"; }
skip() { echo "skip - dist: $1: $2"; }
fail() { # name [log]
  echo "not ok - dist: $1"
  [ -n "${2:-}" ] && [ -f "$2" ] && sed 's/^/#   /' "$2" | tail -n 30
  failed=1
}
have() { "$@" >/dev/null 2>&1; }

missing=""
for tool in git make "$CC" lua5.4 luarocks zip md5sum sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing, $tool"
done
[ -f /usr/include/lua5.4/lua.h ] || missing="$missing, /usr/include/lua5.4/lua.h"
have git rev-parse -q --verify HEAD || missing="$missing, a git checkout"
if [ -n "$missing" ]; then
  echo "skip - dist: the release builds outside the checkout: missing ${missing#, }"
  exit 77
fi

# Outside the checkout, so that nothing of it (build/, lua/) is found.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/threadlocal-dist.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
# No network: a proxy that refuses, and a HOME without LuaRocks' cache.
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HOME="$tmp/home"
mkdir -p "$HOME"

# --- make dist
log="$tmp/dist.log"
version=$(git show HEAD:src/threadlocal.h |
  awk '/^#define THREADLOCAL_VERSION_(MAJOR|MINOR|PATCH) /{v = v (v == "" ? "" : ".") $3} END{print v}')
name=threadlocal-$version
rock=$name-1
dist="$tmp/dist"
if make --no-print-directory dist DIST="$dist" >"$log" 2>&1 &&
  (cd "$dist" && sha256sum -c SHA256SUMS) >>"$log" 2>&1 &&
  [ "$(cut -d' ' -f3 "$dist/SHA256SUMS" | sort | tr '\n' ' ')" = "$rock.rockspec $rock.src.rock $name.tar.gz " ]; then
  ok "make dist makes $name.tar.gz, $rock.rockspec, $rock.src.rock and SHA256SUMS"
else
  fail "make dist makes $name.tar.gz, $rock.rockspec, $rock.src.rock and SHA256SUMS" "$log"
  exit 1
fi

# The tarball is HEAD's tree, nothing more: no build output, no untracked file.
log="$tmp/tar.log"
git ls-tree -r --name-only HEAD | sed "s|^|$name/|" | sort >"$tmp/tracked"
tar tzf "$dist/$name.tar.gz" | grep -v '/$' | sort >"$tmp/packed"
if diff "$tmp/tracked" "$tmp/packed" >"$log" 2>&1; then
  ok "the tarball holds exactly the files committed at HEAD, under $name/"
else
  fail "the tarball holds exactly the files committed at HEAD, under $name/" "$log"
fi

# The rockspec alone builds next to its tarball, as LuaRocks fetches it then
# checks its md5.  Every build here is -O0: it checks packaging, not code.
log="$tmp/rockspec.log"
name_spec="luarocks builds $rock.rockspec from the tarball next to it, offline, md5 checked"
(cd "$dist" && luarocks --lua-version 5.4 --only-server=/nonexistent build "$rock.rockspec" \
  --tree "$tmp/rocks-spec" CFLAGS="-O0 -fPIC") >"$log" 2>&1 &
spec_pid=$!
# The .src.rock into a tree of its own, meanwhile.
tree="$tmp/rocks"
(cd "$tmp" && luarocks --lua-version 5.4 --only-server=/nonexistent build "$dist/$rock.src.rock" \
  --tree "$tree" CFLAGS="-O0 -fPIC") >"$tmp/rock.log" 2>&1 &
rock_pid=$!

# luarocks make in a checkout builds as the release does.
log="$tmp/scm.log"
build_table() { sed -n '/^build = {/,$p' "$1" | grep -v 'copy_directories'; }
if build_table rockspec/threadlocal-scm-1.rockspec >"$tmp/scm-build" &&
  build_table "$dist/$rock.rockspec" >"$tmp/release-build" &&
  diff "$tmp/scm-build" "$tmp/release-build" >"$log" 2>&1; then
  ok "the scm rockspec's build table is the release rockspec's"
else
  fail "the scm rockspec's build table is the release rockspec's" "$log"
fi

# requires_ok NAME PATH CPATH [JIT]: lua5.4 requires threadlocal (the C
# module, though a threadlocal.lua might be on PATH) and threadlocal.context,
# in both orders; with JIT, require "threadlocal.jit" must fail.
requires_ok() {
  log="$tmp/require-$(echo "$1" | tr -c 'a-z0-9\n' '-').log"
  for first in threadlocal threadlocal.context; do
    TL_PATH="$2" TL_CPATH="$3" TL_FIRST=$first TL_JIT="${4:-}" TL_VERSION="$version" lua5.4 -e '
      package.path, package.cpath = os.getenv("TL_PATH"), os.getenv("TL_CPATH")
      local first = os.getenv("TL_FIRST")
      require(first)
      local threadlocal, context = require "threadlocal", require "threadlocal.context"
      assert(debug.getinfo(threadlocal.new, "S").what == "C", "threadlocal is not the C module")
      assert(package.searchpath("threadlocal", package.cpath), "threadlocal.so not on cpath")
      assert(threadlocal.version == os.getenv("TL_VERSION"), threadlocal.version)
      local v = context.var("x", 1)
      assert(v:get() == 1 and threadlocal.new().x == nil)
      if os.getenv("TL_JIT") ~= "" then
        local found, err = pcall(require, "threadlocal.jit")
        assert(not found, "require \"threadlocal.jit\" works")
        assert(err:find("not found", 1, true), err)
      end
    ' >>"$log" 2>&1 || return 1
  done
}

# --- The tarball with make: build, install into a prefix.
src="$tmp/src"
prefix="$tmp/prefix"
mkdir -p "$src"
log="$tmp/make.log"
name_make="the unpacked tarball builds with make and installs with make install PREFIX=..."
if tar xzf "$dist/$name.tar.gz" -C "$src" >"$log" 2>&1 &&
  (cd "$src/$name" && make LUA=lua5.4 CFLAGS=-O0 && make LUA=lua5.4 CFLAGS=-O0 install PREFIX="$prefix") \
    >>"$log" 2>&1; then
  ok "$name_make"
  lpath="$prefix/share/lua/5.4/?.lua;$prefix/share/lua/5.4/?/init.lua"
  if requires_ok "make install" "$lpath" "$prefix/lib/lua/5.4/?.so" jit; then
    ok "lua5.4 requires threadlocal and threadlocal.context from make install's prefix; threadlocal.jit is not found"
  else
    fail "lua5.4 requires threadlocal and threadlocal.context from make install's prefix; threadlocal.jit is not found" \
      "$log"
  fi
  # LuaLS type files go off package.path, so types/threadlocal.lua cannot hide
  # the C module; a release without types/ is given a stand-in here.
  log="$tmp/types.log"
  [ -d "$src/$name/types" ] || { mkdir "$src/$name/types" && printf -- '---@meta\nreturn {}\n' \
    >"$src/$name/types/threadlocal.lua"; }
  if (cd "$src/$name" && make LUA=lua5.4 CFLAGS=-O0 install PREFIX="$prefix") >"$log" 2>&1 &&
    (cd "$src/$name/types" && find . -type f) | while read -r f; do
      cmp "$src/$name/types/$f" "$prefix/share/threadlocal/types/$f" || exit 1
    done >>"$log" 2>&1 &&
    requires_ok "types" "$lpath;;" "$prefix/lib/lua/5.4/?.so;;" &&
    (cd "$src/$name" && make LUA=lua5.4 uninstall PREFIX="$prefix") >>"$log" 2>&1 &&
    [ ! -e "$prefix/share/threadlocal" ] &&
    (cd "$src/$name" && make LUA=lua5.4 CFLAGS=-O0 install PREFIX="$prefix") >>"$log" 2>&1; then
    ok "make install puts types/ under share/threadlocal/types, and require still finds the C module"
  else
    fail "make install puts types/ under share/threadlocal/types, and require still finds the C module" \
      "$log"
  fi
else
  fail "$name_make" "$log"
fi

if wait $spec_pid && grep -q "md5 = \"$(md5sum "$dist/$name.tar.gz" | cut -d' ' -f1)\"" \
    "$dist/$rock.rockspec" && ! grep -q 'url = "file:\|git+' "$dist/$rock.rockspec"; then
  ok "$name_spec"
else
  fail "$name_spec" "$tmp/rockspec.log"
fi

# --- The .src.rock with luarocks, offline, into a tree.
name_rock="luarocks builds $rock.src.rock offline into a tree"
if wait $rock_pid; then
  ok "$name_rock"
  # The rock installs the module and its public companion, nothing else
  # Lua could require (the same threadlocal.context is built in).
  log="$tmp/rock-files.log"
  if (cd "$tree" && find . -type f ! -path './lib/luarocks/*' | sort) >"$log" 2>&1 &&
    [ "$(tr '\n' ' ' <"$log")" = "./lib/lua/5.4/threadlocal.so ./share/lua/5.4/threadlocal/context.lua " ] &&
    cmp "$tree/share/lua/5.4/threadlocal/context.lua" lua/threadlocal/context.lua >>"$log" 2>&1; then
    ok "the rock installs threadlocal.so and threadlocal/context.lua, nothing else"
  else
    fail "the rock installs threadlocal.so and threadlocal/context.lua, nothing else" "$log"
  fi
  if requires_ok "rock" "$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua" \
    "$tree/lib/lua/5.4/?.so" jit; then
    ok "lua5.4 requires threadlocal and threadlocal.context from the rock tree; threadlocal.jit is not found"
  else
    fail "lua5.4 requires threadlocal and threadlocal.context from the rock tree; threadlocal.jit is not found" \
      "$log"
  fi
  if git cat-file -e HEAD:types 2>/dev/null; then
    if [ -d "$tree/lib/luarocks/rocks-5.4/threadlocal/$version-1/types" ]; then
      ok "the rock copies types/ into its directory"
    else
      fail "the rock copies types/ into its directory"
    fi
  fi
else
  fail "$name_rock" "$tmp/rock.log"
fi

# --- A C host against the installed header, through pkg-config.
log="$tmp/host.log"
name_host="a C host builds against make install's threadlocal.h and libthreadlocal.a through pkg-config"
if ! have pkg-config --version; then
  skip "$name_host" "pkg-config is not installed"
elif [ ! -f "$prefix/lib/pkgconfig/threadlocal.pc" ]; then
  fail "$name_host" "$tmp/make.log"
elif (cd "$src/$name/examples/consumer" && PKG_CONFIG_PATH="$prefix/lib/pkgconfig" sh -c \
    "$CC -Wall -Wextra -Werror -o '$tmp/host' host.c \$(pkg-config --cflags --libs threadlocal) -llua5.4 -lm") \
    >"$log" 2>&1 && "$tmp/host" >"$tmp/host.out" 2>>"$log" &&
    grep -q "^consumer: threadlocal $version: " "$tmp/host.out"; then
  ok "$name_host"
else
  cat "$tmp/host.out" >>"$log" 2>/dev/null
  fail "$name_host" "$log"
fi

# --- Every place that states the version says the same.
log="$tmp/versions.log"
: >"$log"
say() { echo "$1=$2" >>"$log"; }
say "threadlocal.h (HEAD)" "$version"
for f in "$dist"/threadlocal-*.tar.gz; do
  say "the tarball's name" "$(basename "$f" | sed -n 's/^threadlocal-\([0-9.]*\)\.tar\.gz$/\1/p')"
done
say "the rockspec" "$(sed -n 's/^version = "\(.*\)-1"$/\1/p' "$dist/$rock.rockspec")"
say "the rockspec's source dir" "$(sed -n 's/^   dir = "threadlocal-\(.*\)",$/\1/p' "$dist/$rock.rockspec")"
printf '#include <stdio.h>\n#include <threadlocal.h>\nint main(void) { puts(THREADLOCAL_VERSION); return 0; }\n' \
  >"$tmp/v.c"
say "THREADLOCAL_VERSION (installed header)" \
  "$($CC -I"$prefix/include" -o "$tmp/v" "$tmp/v.c" 2>>"$log" && "$tmp/v")"
# lua_version CPATH: threadlocal.version of the threadlocal.so found there.
lua_version() {
  TL_CPATH="$1" lua5.4 -e 'package.path, package.cpath = "", os.getenv("TL_CPATH")
    print(require("threadlocal").version)' 2>>"$log"
}
say "threadlocal.version (make install)" "$(lua_version "$prefix/lib/lua/5.4/?.so")"
say "threadlocal.version (rock)" "$(lua_version "$tree/lib/lua/5.4/?.so")"
if have pkg-config --version; then
  say "pkg-config (make install)" "$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --modversion threadlocal)"
fi
say "CMake package (make install)" \
  "$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")$/\1/p' "$prefix/lib/cmake/threadlocal/threadlocal-config-version.cmake")"
if have cmake --version && cmake -S "$src/$name" -B "$tmp/cmake" -DTHREADLOCAL_LUA_VERSION=5.4 \
    >>"$tmp/cmake.log" 2>&1; then
  say "CMake project" "$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$tmp/cmake/CMakeCache.txt")"
  say "CMake package (CMake build)" \
    "$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")$/\1/p' "$tmp/cmake/threadlocal-config-version.cmake")"
  say "threadlocal.pc (CMake build)" "$(sed -n 's/^Version: //p' "$tmp/cmake/threadlocal.pc")"
fi
if [ "$(cut -d= -f2 "$log" | sort -u)" = "$version" ] && [ -n "$version" ]; then
  ok "the version is $version in all $(wc -l <"$log") places that state it"
else
  fail "the version is the same in threadlocal.h, THREADLOCAL_VERSION, threadlocal.version, the rockspec, pkg-config and CMake" "$log"
fi

# --- luarocks make in a checkout (a copy of HEAD's tree, as a contributor's)
log="$tmp/make-rock.log"
mkdir -p "$tmp/checkout" && git archive HEAD | tar -x -C "$tmp/checkout"
if (cd "$tmp/checkout" && luarocks --lua-version 5.4 make rockspec/threadlocal-scm-1.rockspec \
    --tree "$tmp/scmtree") >"$log" 2>&1 &&
  TL_CPATH="$tmp/scmtree/lib/lua/5.4/?.so" lua5.4 -e '
    package.path, package.cpath = "", os.getenv("TL_CPATH")
    local threadlocal = require "threadlocal"
    assert(threadlocal.new(function(self, n) self.n = n end, 42).n == 42)' >>"$log" 2>&1; then
  ok "luarocks make in a checkout installs a module that lua5.4 requires from the tree"
else
  fail "luarocks make in a checkout installs a module that lua5.4 requires from the tree" "$log"
fi

exit $failed
