# Shared helpers for brokers.d/*.sh (sourced, not run).
set -euo pipefail
: "${QUEUEKIT_VAR:?scripts/brokers sets QUEUEKIT_VAR}"

log() { echo "[brokers] $*" >&2; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS NAME: wait until the port answers, or fail loudly.
wait_port() {
  local host=$1 port=$2 limit=$3 name=$4 waited=0
  until port_open "$host" "$port"; do
    if [ "$waited" -ge $((limit * 10)) ]; then
      log "$name did not answer on $host:$port within ${limit}s"; return 1
    fi
    sleep 0.1; waited=$((waited + 1))
  done
  log "$name answers on $host:$port"
}

# apt_install PKG...: install the Debian packages that are missing (apt-get update once).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local stamp="$QUEUEKIT_VAR/.apt-updated"
  if [ ! -f "$stamp" ]; then apt-get update -qq && touch "$stamp"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# stop_pid PID NAME SECONDS: SIGTERM, then wait until the process has exited (not only its
# port closed), so a daemon started next cannot race it.
stop_pid() {
  local pid=$1 name=$2 limit=$3 waited=0
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge $((limit * 10)) ]; then log "$name (pid $pid) did not stop within ${limit}s"; return 1; fi
    sleep 0.1; waited=$((waited + 1))
  done
}

# tls_certs: a throw-away CA and what it signs, under $QUEUEKIT_VAR/tls (made once, then
# reused), for the brokers' TLS listeners and the tests: ca.crt, server.crt/.key (localhost,
# pubsub.localhost, 127.0.0.1), client.crt/.key (CN=queuekit-client) and other-ca.crt (a CA
# that signed nothing: a "wrong CA" for the tests). Prints the directory.
tls_certs() {
  local dir="$QUEUEKIT_VAR/tls" tmp
  if [ ! -f "$dir/other-ca.crt" ]; then
    tmp=$(mktemp -d "$QUEUEKIT_VAR/tls.XXXXXX")
    (
      cd "$tmp"
      ca() {  # ca NAME SUBJECT: a self-signed CA certificate and its key
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "$2" \
          -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
          -keyout "$1.key" -out "$1.crt" 2>/dev/null
      }
      leaf() {  # leaf NAME SUBJECT EXTENSIONS: a key and a certificate signed by ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
        printf '%s\n' "$3" >"$1.ext"
        openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
          -extfile "$1.ext" -out "$1.crt" 2>/dev/null
        rm "$1.csr" "$1.ext"
      }
      ca ca "/CN=queuekit test CA"
      leaf server "/CN=localhost" "subjectAltName=DNS:localhost,DNS:pubsub.localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
      leaf client "/CN=queuekit-client" "extendedKeyUsage=clientAuth"
      ca other-ca "/CN=queuekit other CA" && rm other-ca.key
      chmod 644 ./*.crt ./*.key  # throw-away keys: the brokers' own users must read them
      chmod 755 .
    )
    rm -rf "$dir"; mv "$tmp" "$dir"
    log "made a test CA and certificates in $dir"
  fi
  echo "$dir"
}

# rabbitmq_node NODE DIR COMMAND ARGS...: run a RabbitMQ command (rabbitmq-server, rabbitmqctl,
# rabbitmq-plugins) for an extra node whose files all live in DIR: config DIR/rabbitmq.conf,
# plugins DIR/enabled_plugins, data and logs below it. The package's own node (its
# /etc/rabbitmq files) is never read or touched. Runs as the rabbitmq user, like the package's
# wrappers, so the Erlang cookie is shared and rabbitmqctl reaches every node.
rabbitmq_node() {
  local node=$1 dir=$2 cmd=$3; shift 3
  local args; args=$(printf ' %q' "$@")
  su rabbitmq -s /bin/sh -c "cd '$dir' && env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME='$node' RABBITMQ_CONF_ENV_FILE='$dir/rabbitmq-env.conf' \
    RABBITMQ_CONFIG_FILE='$dir/rabbitmq.conf' RABBITMQ_ENABLED_PLUGINS_FILE='$dir/enabled_plugins' \
    RABBITMQ_MNESIA_BASE='$dir/mnesia' RABBITMQ_LOG_BASE='$dir/log' \
    RABBITMQ_PID_FILE='$dir/rabbitmq.pid' ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
    /usr/lib/rabbitmq/bin/$cmd$args"
}

# start_rabbitmq_node NODE DIR DIST_PORT: start that node detached (DIR must hold its
# rabbitmq.conf and enabled_plugins; Erlang distribution on DIST_PORT, as each node on a host
# needs its own) and wait until its app runs; a node already running is left alone.
start_rabbitmq_node() {
  local node=$1 dir=$2 dist_port=$3
  mkdir -p "$dir/log" "$dir/mnesia"
  echo "DIST_PORT=$dist_port" >"$dir/rabbitmq-env.conf"
  chown -R rabbitmq:rabbitmq "$dir"
  if ! rabbitmq_node "$node" "$dir" rabbitmqctl -q ping >/dev/null 2>&1; then
    log "starting RabbitMQ node $node (log: $dir/log/)"
    rabbitmq_node "$node" "$dir" rabbitmq-server -detached
  fi
  local deadline=$((SECONDS + 90))  # the node needs a moment before rabbitmqctl reaches it
  until rabbitmq_node "$node" "$dir" rabbitmqctl -q ping >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { log "$node did not start; see $dir/log/"; return 1; }
    sleep 0.5
  done
  rabbitmq_node "$node" "$dir" rabbitmqctl -q await_startup --timeout 120 >/dev/null
}
