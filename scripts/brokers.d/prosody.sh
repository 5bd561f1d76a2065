# Prosody (XMPP) with a XEP-0060 pub/sub component, on loopback, for the xmpp:// adapter.
#
# Everything lives under $QUEUEKIT_VAR/prosody (config, data, pidfile, log): the system
# config in /etc/prosody is never read. No s2s, no HTTP, no DNS: nothing leaves the machine.
# c2s listens on 127.0.0.1 only and does not require TLS there: STARTTLS is offered with the
# certificate tls_certs (lib.sh) signs for localhost, and the plain URL opts in to SCRAM on an
# unencrypted stream explicitly; the TLS URL trusts that CA (ca=).
#
# Storage is SQLite through mod_storage_sql (lua-dbi-sqlite3) in WAL mode: measured faster
# than the internal file store for persisted pub/sub items (docs/xmpp.md). Nodes may keep
# up to pubsub_max_items; the adapter refuses to publish into a full node (QueueFull).
#
# Env: QUEUEKIT_PROSODY_PORT (c2s, default 5222), QUEUEKIT_PROSODY_MAX_ITEMS (per node,
# default 100000), QUEUEKIT_PROSODY_STORAGE (sql | internal, for measuring; the data of one
# is invisible to the other).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"

port=${QUEUEKIT_PROSODY_PORT:-5222}
dir="$QUEUEKIT_VAR/prosody"
cfg="$dir/prosody.cfg.lua"
pidfile="$dir/prosody.pid"
user=queuekit
password=queuekit
storage=${QUEUEKIT_PROSODY_STORAGE:-sql}
max_items=${QUEUEKIT_PROSODY_MAX_ITEMS:-100000}

our_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_config() {
  mkdir -p "$dir/data" "$dir/certs"
  chmod 700 "$dir/data"
  local certs; certs=$(tls_certs)
  cp "$certs/server.crt" "$dir/certs/localhost.crt"
  cp "$certs/server.key" "$dir/certs/localhost.key"
  cat >"$cfg" <<EOF
-- Written by scripts/brokers.d/prosody.sh; regenerated on every start.
pidfile = "$pidfile"
run_as_root = true  -- containers and CI run as root; everything stays on loopback
data_path = "$dir/data"
plugin_paths = {}
admins = { "$user@localhost" }  -- Prosody 0.12 lets only admins create pub/sub nodes
interfaces = { "127.0.0.1" }
c2s_ports = { $port }
c2s_interfaces = { "127.0.0.1" }
s2s_ports = {}
c2s_direct_tls_ports = {}
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "posix", "uptime" }
modules_disabled = { "s2s", "offline", "http", "bosh", "websocket", "admin_shell", "dialback" }
c2s_require_encryption = false       -- loopback only; clients opt in (see docs/xmpp.md)
allow_unencrypted_plain_auth = false -- SCRAM on the plain stream, never PLAIN
s2s_require_encryption = false
authentication = "internal_hashed"
storage = "$storage"
sql = { driver = "SQLite3", database = "prosody.sqlite" }
certificates = "$dir/certs"
ssl = { certificate = "$dir/certs/localhost.crt", key = "$dir/certs/localhost.key" }
use_dane = false
log = { info = "$dir/prosody.log"; error = "$dir/prosody.err" }

VirtualHost "localhost"

-- A domain the test certificate does not name: tests/test_tls.py checks that a client
-- refuses the certificate it is offered there (XMPP checks the domain, not the address).
VirtualHost "misnamed.localhost"

Component "pubsub.localhost" "pubsub"
  pubsub_max_items = $max_items
  expose_publisher = false
EOF
}

start() {
  write_config
  rm -f "$pidfile"
  # Accounts first, while the server is down: prosodyctl and a running prosody would share
  # the SQLite file. register is idempotent (it sets the password of an existing account).
  prosodyctl --config "$cfg" register "$user" localhost "$password" >/dev/null
  prosodyctl --config "$cfg" register queuekit2 localhost "$password" >/dev/null
  # WAL: one fsync per commit instead of several (still durable); the mode sticks to the file.
  [ "$storage" != sql ] || python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("pragma journal_mode=wal").close()' "$dir/data/prosody.sqlite"
  setsid nohup prosody --config "$cfg" -F >>"$dir/prosody.out" 2>&1 </dev/null &
  wait_port 127.0.0.1 "$port" 30 prosody || { tail -n 20 "$dir/prosody.out" "$dir/prosody.err" >&2 || true; return 1; }
  for _ in $(seq 50); do our_pid >/dev/null && return 0; sleep 0.1; done
  log "prosody answers but wrote no pidfile"; return 1
}

stop() {
  local pid
  pid=$(our_pid) || return 0
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "prosody ($pid) did not stop on TERM; killing it"; kill -9 "$pid" 2>/dev/null || true
}

case "${1:-up}" in
  up)
    apt_install prosody lua-dbi-sqlite3 lua-unbound openssl
    if port_open 127.0.0.1 "$port"; then
      our_pid >/dev/null || { log "port $port answers but it is not our prosody (set QUEUEKIT_PROSODY_PORT)"; exit 1; }
      log "prosody already answers on 127.0.0.1:$port"
    else
      start
    fi ;;
  restart) stop; start ;;
  urls) echo "xmpp://$user:$password@127.0.0.1:$port/?domain=localhost&pubsub=pubsub.localhost&tls=off&allow_plaintext=1"
        echo "xmpp://$user:$password@127.0.0.1:$port/?domain=localhost&pubsub=pubsub.localhost&ca=$QUEUEKIT_VAR/tls/ca.crt" ;;
  *) echo "usage: prosody.sh up|restart|urls" >&2; exit 2 ;;
esac
