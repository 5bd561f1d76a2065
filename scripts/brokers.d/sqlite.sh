# The embedded default needs no server: check that Python's sqlite3 has what we rely on.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); source "$here/lib.sh"
case "${1:-up}" in
  up|restart)
    python3 - <<'PY'
import sqlite3, sys
assert sys.version_info >= (3, 11), "queuekit needs Python 3.11+"
major, minor, _ = sqlite3.sqlite_version_info
assert (major, minor) >= (3, 35), f"SQLite {sqlite3.sqlite_version} lacks RETURNING (needs 3.35+)"
print(f"[brokers] sqlite {sqlite3.sqlite_version} ready (Python {sys.version.split()[0]})", file=sys.stderr)
PY
    ;;
  urls) echo "memory://conformance"; echo "sqlite:///$QUEUEKIT_VAR/conformance.db?lease=2" ;;
esac
