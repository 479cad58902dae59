#!/usr/bin/env bash
# test_layering.sh SRC - the include rules of docs/ARCHITECTURE.md hold: daemon/ never includes worker/
# or kernels/; kernels/ nothing of worker/, daemon/ or ctl/; client/ only common/ and proto/, cluster/
# also http/; ctl/ only common/ and proto/; no two files include each other.
set -u
src=$1
cd "$src" || exit 1
fail=0
bad() { echo "FAIL: $*"; fail=1; }
# the project includes of one file, as repository paths ("dir/name.h"; relative ones resolved)
incs() {
  local f=$1 d
  d=$(dirname "$f")
  sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | while read -r inc; do
    if [ -f "$d/$inc" ]; then realpath --relative-to=. "$d/$inc"; else echo "$inc"; fi
  done
}
check_dir() { # check_dir DIR ALLOWED-PREFIXES...
  local dir=$1 f inc p ok
  shift
  for f in $(git ls-files "$dir" | grep -E '\.(c|h|cc|cu|cuh)$'); do
    for inc in $(incs "$f"); do
      case $inc in */*) ;; *) continue ;; esac  # system-style or same-folder names
      ok=0
      for p in "$dir" "$@"; do
        case $inc in "$p"/*) ok=1 ;; esac
      done
      [ $ok = 1 ] || bad "$f includes $inc"
    done
  done
}
check_dir common
check_dir ctl common proto
check_dir kernels common
check_dir parallel common kernels
check_dir client common proto
check_dir http common
check_dir cluster common proto http
check_dir daemon common proto ctl cluster parallel http
check_dir worker common proto ctl kernels parallel
# no two files include each other
pairs=$(for f in $(git ls-files | grep -E '\.(c|h|cc|cu|cuh)$'); do
  for inc in $(incs "$f"); do [ -f "$inc" ] && echo "$f $inc"; done
done | sort -u)
while read -r a b; do
  [ -n "$a" ] || continue
  grep -qx "$b $a" <<<"$pairs" && bad "$a and $b include each other"
done <<<"$pairs"
[ $fail = 0 ] && echo "ok: the include rules hold"
exit $fail
