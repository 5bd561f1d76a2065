# RabbitMQ's STOMP plugin (rabbitmq_stomp) on 127.0.0.1:61613, on the RabbitMQ that
# brokers.d/rabbitmq.sh installs and starts. Enabling a plugin is recorded in RabbitMQ's
# enabled_plugins file, so it survives that script's `restart`; `up` is idempotent.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
port=61613

rabbitmq() {  # delegate to the RabbitMQ script when it is there (it owns the server)
  if [ -f "$here/rabbitmq.sh" ]; then bash "$here/rabbitmq.sh" "$1"; return; fi
  port_open 127.0.0.1 5672 || { log "RabbitMQ is not running and brokers.d/rabbitmq.sh is missing"; return 1; }
}

enable_stomp() {
  port_open 127.0.0.1 "$port" && { log "rabbitmq-stomp answers on 127.0.0.1:$port"; return 0; }
  log "enabling rabbitmq_stomp"
  rabbitmq-plugins enable rabbitmq_stomp >/dev/null
  wait_port 127.0.0.1 "$port" 60 rabbitmq-stomp
}

case "${1:-up}" in
  up) port_open 127.0.0.1 "$port" && { log "rabbitmq-stomp answers on 127.0.0.1:$port"; exit 0; }
      rabbitmq up; enable_stomp ;;
  restart) rabbitmq restart; enable_stomp ;;
  urls) echo "stomp://guest:guest@127.0.0.1:$port" ;;  # worker conformance passes on it
  *) echo "usage: $0 up|restart|urls" >&2; exit 2 ;;
esac
