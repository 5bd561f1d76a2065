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
  check_persistent
}

# The conformance URL for 4730 declares durable, so whatever answers there must really keep
# its queue on disk: ask it for its pid (admin `getpid`) and read its command line. (On a
# fresh machine Debian's own gearman-job-server service may hold 4730, in memory.)
check_persistent() {
  local line pid
  exec 3<>"/dev/tcp/$host/$persistent_port"
  printf 'getpid\n' >&3
  read -r -t 5 line <&3 || line=""
  exec 3>&-
  pid=${line#OK }
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
     tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--queue-type=libsqlite3"; then
    return 0
  fi
  log "the gearmand on $host:$persistent_port (pid ${pid:-?}) has no persistent queue: stop it" \
      "(e.g. service gearman-job-server stop) or set QUEUEKIT_GEARMAN_PORT"
  return 1
}

start_memory() { start_daemon "$memory_port" memory; }

stop_persistent() {
  local pidfile="$dir/persistent.pid"
  [ -f "$pidfile" ] || { log "no $pidfile: gearmand (persistent) was not started by this script"; return 1; }
  local pid; pid=$(cat "$pidfile")
  # gearmand 1.1 sometimes hangs on SIGTERM (GEARMAND_WAKEUP_RUN: Bad file descriptor in its
  # log) after closing its port; left so, `up` would start a second daemon on the same
  # queue.db. SIGKILL loses nothing: libsqlite3 stores a background job before it is
  # confirmed and deletes it only when a worker completes it.
  if ! stop_pid "$pid" "gearmand (persistent)" 15; then
    log "killing gearmand (persistent) (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
    stop_pid "$pid" "gearmand (persistent)" 5
  fi
  # Meanwhile another `up` may have started a daemon that wrote its own pid here: keep that.
  [ "$(cat "$pidfile" 2>/dev/null)" != "$pid" ] || rm -f "$pidfile"
}

case "${1:-up}" in
  up)
    if ! dpkg-query -W -f='${Status}' gearman-job-server 2>/dev/null | grep -q "ok installed"; then
      apt_install gearman-job-server
      # The package may start its own in-memory service on localhost:4730: stop that one
      # (only that one, through its init script) so ours can take the port.
      if [ -x /etc/init.d/gearman-job-server ]; then
        /etc/init.d/gearman-job-server stop >/dev/null 2>&1 || true
      fi
    fi
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
