# RabbitMQ (Debian package `rabbitmq-server`) on 127.0.0.1:5672, guest/guest, for amqp://.
# The node is the package's own (node rabbit@localhost, config in /etc/rabbitmq), so
# rabbitmqctl/rabbitmq-plugins work without extra environment and brokers.d/rabbitmq-stomp.sh
# can enable its plugin on the same node. No systemd: the node is started with -detached.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
port=5672

configure() {  # loopback only; never overwrite a configuration somebody already wrote
  local etc=/etc/rabbitmq
  mkdir -p "$etc"
  [ -f "$etc/rabbitmq-env.conf" ] || cat >"$etc/rabbitmq-env.conf" <<'CONF'
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
CONF
  [ -f "$etc/rabbitmq.conf" ] || echo "listeners.tcp.local = 127.0.0.1:$port" >"$etc/rabbitmq.conf"
}

ready() {  # wait until the node runs the app and the AMQP port answers
  rabbitmqctl -q await_startup --timeout 120 >/dev/null
  wait_port 127.0.0.1 "$port" 120 rabbitmq
}

start() {
  apt_install rabbitmq-server
  configure
  port_open 127.0.0.1 "$port" && { log "rabbitmq answers on 127.0.0.1:$port"; return 0; }
  if rabbitmqctl -q ping >/dev/null 2>&1; then
    log "rabbitmq node is up without its app: starting the app"
    rabbitmqctl -q start_app
  else
    log "starting rabbitmq-server (log: /var/log/rabbitmq/)"
    rabbitmq-server -detached
    # the node needs a moment before rabbitmqctl can reach it at all
    for _ in $(seq 1 300); do rabbitmqctl -q ping >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  ready
}

expire_unused() {
  # Test runs declare thousands of durable queues (one per test, one per priority band); a
  # node holding that many restarts slowly. The broker deletes any queue nobody has used
  # for 30 minutes, except the delay cascade's, which every delayed message relies on.
  rabbitmqctl -q set_policy --apply-to queues queuekit-expire-unused \
    '^(?!queuekit\.delay\.)' '{"expires": 1800000}' >/dev/null
}

restart() {  # stop and start the app (queues, plugins and users stay); the node keeps running
  if ! rabbitmqctl -q ping >/dev/null 2>&1; then start; return; fi
  log "restarting the rabbitmq app"
  rabbitmqctl -q stop_app
  rabbitmqctl -q start_app
  ready
}

case "${1:-up}" in
  up) if port_open 127.0.0.1 "$port"; then log "rabbitmq answers on 127.0.0.1:$port"; else start; fi
      expire_unused ;;
  restart) restart ;;
  urls) echo "amqp://guest:guest@127.0.0.1:$port/" ;;  # the conformance suite passes on it
  *) echo "usage: $0 up|restart|urls" >&2; exit 2 ;;
esac
