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
