# gearmand (Debian gearman-job-server), two daemons on loopback:
#   4730  persistent queue (libsqlite3 under $QUEUEKIT_VAR/gearman): background jobs survive restarts
#   4731  in-memory queue: faster, loses every job on restart (durable is not declared there)
# `restart` restarts the persistent one (the conformance suite's broker-restart case).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"

dir="$QUEUEKIT_VAR/gearman"
host=127.0.0.1
persistent_port=${QUEUEKIT_GEARMAN_PORT:-4730}
memory_port=${QUEUEKIT_GEARMAN_MEMORY_PORT:-4731}

gearmand_bin() {
  if [ -x /usr/sbin/gearmand ]; then echo /usr/sbin/gearmand; else command -v gearmand; fi
}

# start_daemon PORT NAME [EXTRA ARGS...]: start one gearmand in the background unless one answers.
start_daemon() {
  local port=$1 name=$2; shift 2
  if port_open "$host" "$port"; then log "gearmand ($name) already answers on $host:$port"; return 0; fi
  "$(gearmand_bin)" --daemon --listen="$host" --port="$port" \
    --pid-file="$dir/$name.pid" --log-file="$dir/$name.log" --verbose=WARNING "$@"
  wait_port "$host" "$port" 15 "gearmand ($name)"
}

start_persistent() {
  start_daemon "$persistent_port" persistent \
    --queue-type=libsqlite3 --libsqlite3-db="$dir/queue.db"
}

start_memory() { start_daemon "$memory_port" memory; }

stop_persistent() {
  local pidfile="$dir/persistent.pid" pid waited=0
  [ -f "$pidfile" ] || { log "no $pidfile: gearmand (persistent) was not started by this script"; return 1; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  # Wait for the process to exit (not only the port to close): a new daemon must not race it.
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge 150 ]; then log "gearmand (persistent, pid $pid) did not stop within 15s"; return 1; fi
    sleep 0.1; waited=$((waited + 1))
  done
  rm -f "$pidfile"
}

case "${1:-up}" in
  up)
    apt_install gearman-job-server
    mkdir -p "$dir"
    start_persistent
    start_memory
    ;;
  restart)
    mkdir -p "$dir"
    stop_persistent
    start_persistent
    ;;
  urls)
    # `worker conformance` passes on both (the restart case runs on the persistent one).
    echo "gearman://$host:$persistent_port?durable=1"
    echo "gearman://$host:$memory_port"
    ;;
  *) echo "usage: gearman.sh up|restart|urls" >&2; exit 2 ;;
esac
