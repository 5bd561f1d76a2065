# A 3-node RabbitMQ cluster on one machine (Debian's `rabbitmq-server`), for quorum queues
# and failover: nodes qk1@localhost..qk3@localhost on AMQP ports 5681-5683 (distribution
# 25681-25683), data and logs under $QUEUEKIT_VAR/rabbitmq-cluster, their own Erlang cookie,
# config, env file and (empty) plugin list, so the machine's own node (rabbit@localhost on
# 5672, brokers.d/rabbitmq.sh) is never touched: every command names its node with -n.
#
#   up              start what is not running (in parallel); a fresh cluster when none runs
#   restart         stop and start the app on every node at once (queues and data stay)
#   urls            the conformance URL: a quorum-queue URL listing the three nodes
#   kill NODE       SIGKILL node NODE (1-3, or its name), as a crash would
#   start NODE      start node NODE again; it rejoins the cluster it belongs to
#   leader QUEUE    the node (qkN@localhost) that leads quorum queue QUEUE
#   ctl NODE ARGS   rabbitmqctl ARGS on node NODE
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
base="$QUEUEKIT_VAR/rabbitmq-cluster"
nodes=(1 2 3)
bin=/usr/lib/rabbitmq/bin

amqp_port() { echo $((5680 + $1)); }
node_name() { echo "qk$1@localhost"; }

node_env() {  # the environment of node $1 (and of rabbitmqctl talking to it)
  local n=$1 dir="$base/qk$1"
  echo HOME="$base" RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" RABBITMQ_DIST_PORT=$((25680 + n)) \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() {  # ctl N ARGS...: rabbitmqctl on node N
  local n=$1; shift
  env $(node_env "$n") "$bin/rabbitmqctl" -q -n "$(node_name "$n")" "$@"
}

node_of() {  # 1, qk1 or qk1@localhost -> 1
  local n=${1#qk}; n=${n%@localhost}
  case "$n" in 1|2|3) echo "$n" ;; *) echo "no such node: $1 (1-3)" >&2; return 2 ;; esac
}

configure() {
  local n
  mkdir -p "$base"
  [ -f "$base/.erlang.cookie" ] || {
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$base/.erlang.cookie"
    chmod 400 "$base/.erlang.cookie"
  }
  : >"$base/rabbitmq-env.conf"  # not /etc/rabbitmq's, which names the machine's node
  echo '[].' >"$base/enabled_plugins"
  for n in "${nodes[@]}"; do
    mkdir -p "$base/qk$n/log"
    # RabbitMQ 3.10 warns that quorum queues cannot keep a majority through a node's loss
    # with fewer than three nodes; three it has
    echo "listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")" >"$base/qk$n/rabbitmq.conf"
  done
}

running() { port_open 127.0.0.1 "$(amqp_port "$1")"; }

start_node() {  # start node $1 in the background; wait for it with ready_node
  local n=$1
  running "$n" && return 0
  log "starting $(node_name "$n") on 127.0.0.1:$(amqp_port "$n") (log: $base/qk$n/log/)"
  env $(node_env "$n") "$bin/rabbitmq-server" -detached >>"$base/qk$n/log/startup.log" 2>&1
}

ready_node() {
  local n=$1
  for _ in $(seq 1 300); do ctl "$n" ping >/dev/null 2>&1 && break; sleep 0.2; done
  ctl "$n" await_startup --timeout 120 >/dev/null
  wait_port 127.0.0.1 "$(amqp_port "$n")" 120 "$(node_name "$n")"
}

clustered() {  # true when node $1 runs with all three nodes in its cluster
  local members
  members=$(ctl "$1" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null) || return 1
  [ "$members" = 3 ]
}

up() {
  apt_install rabbitmq-server
  local n any=0
  for n in "${nodes[@]}"; do running "$n" && any=1; done
  if [ "$any" = 0 ]; then  # nothing left to rejoin: begin afresh (tests delete their queues)
    rm -rf "$base"
  elif running 1 && running 2 && running 3 && clustered 1; then
    log "rabbitmq cluster of 3 nodes answers on 127.0.0.1:5681-5683"; return 0
  fi
  configure
  for n in "${nodes[@]}"; do start_node "$n"; done
  for n in "${nodes[@]}"; do ready_node "$n"; done
  for n in 2 3; do
    clustered "$n" && continue
    log "joining $(node_name "$n") to $(node_name 1)"
    ctl "$n" stop_app
    ctl "$n" join_cluster "$(node_name 1)"
    ctl "$n" start_app
    ready_node "$n"
  done
  clustered 1 || { log "the rabbitmq cluster did not form"; return 1; }
  log "rabbitmq cluster of 3 nodes answers on 127.0.0.1:5681-5683"
}

restart() {  # every node's app at once: quorum queues lose their majority, then recover
  local n
  for n in "${nodes[@]}"; do running "$n" || { up; return; }; done
  log "restarting the rabbitmq cluster's apps"
  local n pids=()
  for n in "${nodes[@]}"; do ctl "$n" stop_app & pids+=($!); done
  wait "${pids[@]}"
  pids=()
  for n in "${nodes[@]}"; do ctl "$n" start_app & pids+=($!); done
  wait "${pids[@]}"
  for n in "${nodes[@]}"; do ready_node "$n"; done
}

kill_node() {
  local n pid
  n=$(node_of "$1")
  pid=$(cat "$base/qk$n/pid")
  log "SIGKILL $(node_name "$n") (pid $pid)"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

leader() {  # the leader of quorum queue $1, asked of any running node
  local n queue=$1
  for n in "${nodes[@]}"; do
    running "$n" || continue
    ctl "$n" list_queues name leader --no-table-headers 2>/dev/null \
      | awk -F'\t' -v q="$queue" '$1 == q { print $2; found = 1 } END { exit !found }' && return 0
  done
  echo "no running node knows quorum queue $queue" >&2; return 1
}

urls() {
  echo "amqp://guest:guest@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683/?queue_type=quorum"
}

verb=${1:-up}; shift || true
case "$verb" in
  up) up ;;
  restart) restart ;;
  urls) urls ;;
  kill) kill_node "${1:?usage: $0 kill NODE}" ;;
  start) node=$(node_of "${1:?usage: $0 start NODE}"); configure; start_node "$node"; ready_node "$node" ;;
  leader) leader "${1:?usage: $0 leader QUEUE}" ;;
  ctl) node=$(node_of "${1:?usage: $0 ctl NODE ARGS}"); shift; ctl "$node" "$@" ;;
  *) echo "usage: $0 up|restart|urls|kill NODE|start NODE|leader QUEUE|ctl NODE ARGS" >&2; exit 2 ;;
esac
