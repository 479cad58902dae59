# gpu_env.sh - sourced by the GPU bench scripts: unpack a bench/pack.sh pack and set the library path.
#   PACK=pack; . bench/gpu_env.sh
# If $PACK holds bins.tar.xz, its binaries and lib/ are unpacked to /tmp/gm-pack and PACK points there;
# the pack's libraries and CUDA's go on LD_LIBRARY_PATH; NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
if [ -f "$PACK/bins.tar.xz" ]; then
  rm -rf /tmp/gm-pack && mkdir -p /tmp/gm-pack && tar -xJf "$PACK/bins.tar.xz" -C /tmp/gm-pack &&
    cp -r "$PACK/lib" /tmp/gm-pack/
  PACK=/tmp/gm-pack
  export LD_LIBRARY_PATH=$PACK/lib:${LD_LIBRARY_PATH:-}
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}:$d
done
export NCCL_NVLS_ENABLE=0

# gpu_wait_up EP PID: wait up to 300 s for the gemmad with that pid to answer Health on EP; 0 when it does,
# else the gemmad is stopped and 1 is returned.
gpu_wait_up() {
  local i
  for i in $(seq 1 300); do
    "$PACK/gemma-cli" --endpoint "$1" --health >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 1
  done
  kill "$2" 2>/dev/null; wait "$2" 2>/dev/null
  return 1
}
