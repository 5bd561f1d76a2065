# ejabberd (XMPP) with mod_pubsub on a pub/sub component, on loopback: the xmpp:// adapter's
# second server (docs/xmpp.md says what differs from Prosody).
#
# Everything lives under $QUEUEKIT_VAR/ejabberd (config, Mnesia spool, logs, pidfile): the
# system config in /etc/ejabberd is never read, and the Debian service is never started.
# ejabberdctl is given our own config, ctl config and config dir; run as root it switches to
# the ejabberd user itself (su), as the package intends, so that directory belongs to it.
# Erlang distribution listens on 127.0.0.1:$dist_port (ERL_DIST_PORT) instead of asking
# epmd, so this node never touches the epmd that RabbitMQ uses.
#
# Nodes keep at most max_items_node items (ejabberd's own cap, 1000 by default; here 100000
# like Prosody's pubsub_max_items). ejabberd does not report that cap in a node's config
# form, so the adapter learns it by asking for max_items=max and reading the number back.
#
# Env: QUEUEKIT_EJABBERD_PORT (c2s, default 5322), QUEUEKIT_EJABBERD_DIST_PORT (Erlang
# distribution, default 5329), QUEUEKIT_EJABBERD_MAX_ITEMS (per node, default 100000).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"

port=${QUEUEKIT_EJABBERD_PORT:-5322}
dist_port=${QUEUEKIT_EJABBERD_DIST_PORT:-5329}
max_items=${QUEUEKIT_EJABBERD_MAX_ITEMS:-100000}
dir="$QUEUEKIT_VAR/ejabberd"
pidfile="$dir/ejabberd.pid"
user=queuekit
password=queuekit

ctl() {
  ejabberdctl --config-dir "$dir" --config "$dir/ejabberd.yml" --ctl-config "$dir/ejabberdctl.cfg" \
    --spool "$dir/db" --logs "$dir/log" "$@"
}

our_pid() {
  [ -f "$pidfile" ] || return 1
  local pid; pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

write_config() {
  mkdir -p "$dir/db" "$dir/log"
  local certs; certs=$(tls_certs)  # STARTTLS with the certificate our test CA signs
  cat "$certs/server.crt" "$certs/server.key" >"$dir/localhost.pem"
  # Read by ejabberdctl (a shell file): the node, its distribution port, a small VM.
  cat >"$dir/ejabberdctl.cfg" <<EOF
# Written by scripts/brokers.d/ejabberd.sh; regenerated on every start.
ERLANG_NODE=ejabberd@localhost
ERL_DIST_PORT=$dist_port
INET_DIST_INTERFACE=127.0.0.1
ERL_MAX_PORTS=4096
ERL_PROCESSES=65536
ERL_MAX_ETS_TABLES=1400
# No busy-waiting schedulers: the machine is small and shared.
ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none -env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH=$pidfile
EJABBERD_BYPASS_WARNINGS=true
EOF
  printf '{lookup,["file","native"]}.\n{host,{127,0,0,1},["localhost"]}.\n' >"$dir/inetrc"
  cat >"$dir/ejabberd.yml" <<EOF
# Written by scripts/brokers.d/ejabberd.sh; regenerated on every start.
hosts:
  - localhost
loglevel: warning
log_rotate_count: 0
certfiles:
  - "$dir/localhost.pem"
listen:
  -
    port: $port
    ip: "127.0.0.1"
    backlog: 128              # many test connections at once (the default is 5)
    module: ejabberd_c2s
    max_stanza_size: 262144
    starttls: true            # offered; the plain URL opts in to a plain stream
    starttls_required: false
auth_method: internal
auth_password_format: scram
disable_sasl_mechanisms:      # SCRAM on the plain stream, never PLAIN
  - "PLAIN"
  - "DIGEST-MD5"
  - "X-OAUTH2"
s2s_access: none              # nothing leaves the machine
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  pubsub_createnode:
    allow: local
modules:
  mod_disco: {}
  mod_ping: {}
  mod_pubsub:
    host: "pubsub.localhost"
    access_createnode: pubsub_createnode
    plugins:
      - flat
    max_items_node: $max_items
    last_item_cache: false
EOF
  chown -R ejabberd:ejabberd "$dir"
  chmod 600 "$dir/localhost.pem"  # the key
}

# register ACCOUNT: once (registered_users is a core command; change_password needs
# mod_admin_extra, which this server does not load).
register() {
  local account=$1
  ctl registered_users localhost | grep -qx "$account" || ctl register "$account" localhost "$password" >/dev/null
}

start() {
  write_config
  rm -f "$pidfile"
  ctl start
  ctl started || { log "ejabberd did not start"; tail -n 20 "$dir/log/ejabberd.log" >&2 || true; return 1; }
  wait_port 127.0.0.1 "$port" 60 ejabberd || { tail -n 20 "$dir/log/ejabberd.log" >&2 || true; return 1; }
  register "$user"
  register queuekit2
  our_pid >/dev/null || { log "ejabberd answers but wrote no pidfile"; return 1; }
}

stop() {
  our_pid >/dev/null || return 0
  ctl stop >/dev/null
  ctl stopped || { log "ejabberd did not stop"; return 1; }
  local pid
  if pid=$(our_pid); then stop_pid "$pid" ejabberd 30; fi
}

case "${1:-up}" in
  up)
    apt_install ejabberd openssl
    if port_open 127.0.0.1 "$port"; then
      our_pid >/dev/null || { log "port $port answers but it is not our ejabberd (set QUEUEKIT_EJABBERD_PORT)"; exit 1; }
      log "ejabberd already answers on 127.0.0.1:$port"
    else
      start
    fi ;;
  restart) stop; start ;;
  urls) echo "xmpp://$user:$password@127.0.0.1:$port/?domain=localhost&pubsub=pubsub.localhost&tls=off&allow_plaintext=1"
        echo "xmpp://$user:$password@127.0.0.1:$port/?domain=localhost&pubsub=pubsub.localhost&ca=$QUEUEKIT_VAR/tls/ca.crt" ;;
  *) echo "usage: ejabberd.sh up|restart|urls" >&2; exit 2 ;;
esac
