# ZeroMQ needs no broker, but zmq:// producers and workers meet at queuekit's routing device
# (queuekit/adapters/zmq/proxy.py): it binds ports P (producers), P+1 (workers), P+2 (subscribers).
# `up` starts it in the background unless one answers; `restart` restarts the one we started.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
root=$(cd "$here/../.." && pwd)

dir="$QUEUEKIT_VAR/zmq"
host=127.0.0.1
port=${QUEUEKIT_ZMQ_PORT:-5560}

python_bin() {
  if [ -x "$root/.venv/bin/python" ]; then echo "$root/.venv/bin/python"; return; fi
  # A fresh machine without the project's venv: Debian's pyzmq and the source tree.
  apt_install python3-zmq >&2
  command -v python3
}

start() {
  if port_open "$host" "$port" && port_open "$host" $((port + 1)) && port_open "$host" $((port + 2)); then
    log "zmq device already answers on $host:$port-$((port + 2))"; return 0
  fi
  mkdir -p "$dir"
  local py; py=$(python_bin)
  PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" nohup "$py" -m queuekit.adapters.zmq.proxy \
    "zmq://$host:$port" >>"$dir/device.log" 2>&1 </dev/null &
  echo $! >"$dir/device.pid"
  wait_port "$host" "$port" 15 "zmq device (producers)"
  wait_port "$host" $((port + 1)) 5 "zmq device (workers)"
  wait_port "$host" $((port + 2)) 5 "zmq device (subscribers)"
}

stop() {
  local pidfile="$dir/device.pid"
  [ -f "$pidfile" ] || { log "no $pidfile: the zmq device was not started by this script"; return 1; }
  stop_pid "$(cat "$pidfile")" "zmq device" 10
  rm -f "$pidfile"
}

case "${1:-up}" in
  up) start ;;
  restart) stop; start ;;
  urls) echo "zmq://$host:$port" ;;
esac
