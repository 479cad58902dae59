#!/usr/bin/env bash
# test_install.sh BUILD_DIR - `cmake --install` into a fresh prefix, then the README's commands work
# from PATH: make the tiny model, serve it on the CPU backend, ask gemma-cli; and a C program builds
# against the installed client library through pkg-config and talks to that gemmad.
set -u
build=$1
prefix=$(mktemp -d)
trap 'kill $dpid 2>/dev/null; wait 2>/dev/null; rm -rf "$prefix"' EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
cmake --install "$build" --prefix "$prefix" > "$prefix/install.log" 2>&1 || { cat "$prefix/install.log"; exit 1; }
export PATH=$prefix/bin:$PATH
unset GEMMAD_DATA
for p in gemmad gemma-worker gemma-cli gemma-generate gemma-mkmodel gemma-quantize gemma-bench gemma-router gemma-keygen; do
  [ "$(command -v $p)" = "$prefix/bin/$p" ] && $p --help > /dev/null 2>&1 || bad "$p --help from PATH"
done
for f in etc/gemmad/gemmad.conf.example lib/systemd/system/gemmad.service include/gemmad/gemma_client.h \
         share/gemmad/corpus.txt share/doc/gemmad/LICENSE; do
  [ -s "$prefix/$f" ] || bad "$f not installed"
done
grep -q "ExecStart=$prefix/bin/gemmad --config $prefix/etc/gemmad/gemmad.conf" "$prefix/lib/systemd/system/gemmad.service" ||
  bad "the systemd unit does not start the installed gemmad"
# the README's first commands, from PATH (the corpus comes from share/gemmad)
cd "$prefix"
gemma-mkmodel --preset tiny --out "$prefix/models/tiny" > mk.log 2>&1 || { cat mk.log; bad "gemma-mkmodel"; }
ep=ipc://$prefix/gemmad.sock
gemmad --model "$prefix/models/tiny" --backend cpu --listen "$ep" > gemmad.log 2>&1 &
dpid=$!
for _ in $(seq 1 100); do gemma-cli --endpoint "$ep" --health > /dev/null 2>&1 && break; sleep 0.2; done
out=$(gemma-cli --endpoint "$ep" --max-tokens 8 "The weather today" 2>&1) && [ -n "$out" ] && ok "gemma-cli from PATH: $out" ||
  bad "gemma-cli: $out"
# a C program against the installed library
cat > "$prefix/probe.c" <<'C'
#include <stdio.h>
#include <gemma_client.h>
int main(int argc, char **argv)
{
    gmc_client *c = NULL;
    if (gmc_connect(argv[1], 10000, &c) != GMC_OK)
        return 1;
    gmc_health h;
    int rc = gmc_health_check(c, 10000, &h) == GMC_OK && h.serving ? 0 : 1;
    printf("%s %s\n", rc ? "not-serving" : "serving", h.backend);
    gmc_close(&c);
    return rc;
}
C
if command -v pkg-config > /dev/null && command -v cc > /dev/null; then
  flags=$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs gemmad-client)
  if cc -o probe probe.c $flags > cc.log 2>&1; then
    out=$(LD_LIBRARY_PATH=$prefix/lib ./probe "$ep") && ok "libgemmad_client: $out" || bad "probe: $out"
  else
    cat cc.log; bad "cannot build against the installed client library"
  fi
fi
kill $dpid; wait $dpid 2>/dev/null
exit $fail
