#!/bin/sh
# Makes the release from the committed tree (HEAD), as docs/release.md says:
#   DIR/threadlocal-X.Y.Z.tar.gz          git archive of HEAD
#   DIR/threadlocal-X.Y.Z-1.rockspec      rockspec/threadlocal.rockspec.in filled in
#   DIR/threadlocal-X.Y.Z-1.src.rock      luarocks pack of that rockspec
#   DIR/SHA256SUMS
# X.Y.Z is THREADLOCAL_VERSION_* of HEAD's src/threadlocal.h.
# Usage: sh tools/dist.sh [DIR]   (default dist)
# The rockspec's source.url is the tarball's name: LuaRocks finds it next to
# the rockspec, and the .src.rock carries it.  HOMEPAGE=URL gives it a
# homepage (none without).
set -eu
cd "$(dirname "$0")/.."
dir=${1:-dist}
die() { echo "make dist: $*" >&2; exit 1; }

git rev-parse -q --verify HEAD >/dev/null || die "needs a git checkout with a commit"
for tool in luarocks zip md5sum sha256sum; do
  command -v $tool >/dev/null 2>&1 || die "needs $tool"
done
# Only what is committed goes in: say so when the tree differs.
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "make dist: uncommitted changes are not in the release (it is HEAD)" >&2
fi

version=$(git show HEAD:src/threadlocal.h |
  awk '/^#define THREADLOCAL_VERSION_(MAJOR|MINOR|PATCH) /{v = v (v == "" ? "" : ".") $3} END{print v}')
echo "$version" | grep -Eqx '[0-9]+\.[0-9]+\.[0-9]+' || die "no version in HEAD's src/threadlocal.h"
name=threadlocal-$version
rock=$name-1
url=$name.tar.gz
homepage=${HOMEPAGE:-}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -f "$dir/$name.tar.gz" "$dir/$rock.rockspec" "$dir/$rock.src.rock" "$dir/SHA256SUMS"

# gzip -n leaves out a timestamp: the same commit makes the same tarball.
git archive --format=tar --prefix="$name/" HEAD | gzip -9n >"$dir/$name.tar.gz"

# LuaRocks checks source.md5.  types/ (LuaLS files) goes in the rock when
# the release has it: LuaRocks fails on a copy_directories entry that is
# missing.  The template's opening comment is left out.
md5=$(md5sum "$dir/$name.tar.gz" | cut -d' ' -f1)
dirs='"docs"'
if git cat-file -e HEAD:types 2>/dev/null; then dirs="$dirs, \"types\""; fi
git show HEAD:rockspec/threadlocal.rockspec.in >"$dir/$rock.rockspec.in" ||
  die "no rockspec/threadlocal.rockspec.in in HEAD"
sed -e "s|@VERSION@|$version|g" -e "s|@URL@|$url|g" -e "s|@MD5@|$md5|g" \
  -e "s|@HOMEPAGE@|$homepage|g" -e "s|@COPY_DIRECTORIES@|$dirs|g" \
  "$dir/$rock.rockspec.in" | sed -e '/^rockspec_format/,$!d' -e '/homepage = ""/d' \
  >"$dir/$rock.rockspec"
rm -f "$dir/$rock.rockspec.in"
if grep -q '@[A-Z_]*@' "$dir/$rock.rockspec"; then die "a placeholder is left in $rock.rockspec"; fi

# luarocks pack fetches the source from a scratch directory, where only an
# absolute file:// URL finds it.  It packs a copy that says so, then the
# rockspec itself replaces that copy in the rock.
pack=$(mktemp -d "$dir/.pack.XXXXXX")
trap 'rm -rf "$pack"' EXIT
sed "s|^   url = .*|   url = \"file://$dir/$url\",|" "$dir/$rock.rockspec" >"$pack/$rock.rockspec"
(cd "$dir" && luarocks pack "$pack/$rock.rockspec" >/dev/null) || die "luarocks pack failed"
(cd "$dir" && zip -q "$rock.src.rock" "$rock.rockspec") || die "zip failed"
[ -f "$dir/$rock.src.rock" ] || die "luarocks pack made no $rock.src.rock"

(cd "$dir" && sha256sum "$name.tar.gz" "$rock.rockspec" "$rock.src.rock" >SHA256SUMS)
[ -n "$homepage" ] || echo "make dist: no HOMEPAGE given: the rockspec has no homepage" >&2
echo "make dist: $dir/{$name.tar.gz,$rock.rockspec,$rock.src.rock,SHA256SUMS}"
