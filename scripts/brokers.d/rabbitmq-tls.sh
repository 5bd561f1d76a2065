# A second RabbitMQ node, qktls@localhost, for TLS only: AMQP over TLS on 127.0.0.1:5671
# (amqps://) and STOMP over TLS on 127.0.0.1:61614 (stomp+ssl://), with certificates from
# tls_certs (lib.sh). The node verifies clients too (verify_peer, fail_if_no_peer_cert), so
# every URL carries the client certificate. It has its own plain AMQP port (5692, Erlang distribution on 25692), data and
# logs under $QUEUEKIT_VAR/rabbitmq-tls, and never touches the package's node on 5672.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
node=qktls@localhost
dir="$QUEUEKIT_VAR/rabbitmq-tls"
plain_port=5692
amqps_port=5671
stomps_port=61614
dist_port=25692

configure() {
  local certs; certs=$(tls_certs)
  mkdir -p "$dir/tls"
  cp "$certs/ca.crt" "$certs/server.crt" "$certs/server.key" "$dir/tls/"
  echo "[rabbitmq_stomp]." >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq.conf" <<CONF
# Written by scripts/brokers.d/rabbitmq-tls.sh; regenerated on every start.
listeners.tcp.1 = 127.0.0.1:$plain_port
listeners.ssl.1 = 127.0.0.1:$amqps_port
stomp.listeners.tcp = none
stomp.listeners.ssl.1 = 127.0.0.1:$stomps_port
ssl_options.cacertfile = $dir/tls/ca.crt
ssl_options.certfile = $dir/tls/server.crt
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
CONF
}

ready() {
  wait_port 127.0.0.1 "$amqps_port" 60 rabbitmq-tls && wait_port 127.0.0.1 "$stomps_port" 60 rabbitmq-tls
}

start() {
  apt_install rabbitmq-server openssl
  configure
  start_rabbitmq_node "$node" "$dir" "$dist_port"
  # as on the main node (rabbitmq.sh): STOMP cannot delete the queues the tests make, so the
  # node deletes those unused for 30 minutes, except the delay cascade's
  rabbitmq_node "$node" "$dir" rabbitmqctl -q set_policy --apply-to queues queuekit-expire-unused \
    '^(?!queuekit\.delay\.)' '{"expires": 1800000}' >/dev/null
  ready
}

restart() {  # stop and start the app: the TLS listeners close and open again
  if ! rabbitmq_node "$node" "$dir" rabbitmqctl -q ping >/dev/null 2>&1; then start; return; fi
  log "restarting the app of $node"
  rabbitmq_node "$node" "$dir" rabbitmqctl -q stop_app
  rabbitmq_node "$node" "$dir" rabbitmqctl -q start_app
  ready
}

case "${1:-up}" in
  up) port_open 127.0.0.1 "$amqps_port" && port_open 127.0.0.1 "$stomps_port" \
        && { log "rabbitmq-tls answers on 127.0.0.1:$amqps_port and :$stomps_port"; exit 0; }
      start ;;
  restart) restart ;;
  urls)
    t="$QUEUEKIT_VAR/tls"
    tls="ca=$t/ca.crt&cert=$t/client.crt&key=$t/client.key"
    echo "amqps://guest:guest@localhost:$amqps_port/?$tls"
    echo "stomp+ssl://guest:guest@localhost:$stomps_port?$tls" ;;
  *) echo "usage: $0 up|restart|urls" >&2; exit 2 ;;
esac
