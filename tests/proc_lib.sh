# proc_lib.sh - sourced by the shell tests that start a daemon.
# stop_pid PID: SIGTERM, up to 5 s for a clean exit, then SIGKILL; nothing if PID is empty or gone.
stop_pid() {
  local p=$1
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  fi
  return 0
}
