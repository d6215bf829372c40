#!/usr/bin/env bash
# Measures replicas that follow a streaming standby (docs/benchmarks.md, "Replicas"):
#   1. resident memory of a full load of 1,000,000 assignments from the standby, for all
#      tenants and for tenant shards 0/2 and 0/10 (examples/pg_load.rs);
#   2. write on the primary -> visible in a replica polling the standby, p50/p99, at poll
#      intervals of 50, 200 and 1000 ms, and read-your-writes (a request waiting for the
#      write's revision) at 200 and 1000 ms (examples/replicas.rs lag);
#   3. database load of N polling replicas (N = 1, 10, 50) through PgBouncer (transaction
#      mode) in front of the standby, and N = 50 directly: transactions/s and CPU of the
#      standby's PostgreSQL and of PgBouncer (examples/replicas.rs load).
#
#   scripts/bench-replicas.sh [TENANTS] [ASSIGNMENTS_PER_TENANT]    # default 10000 100
#
# Starts its own primary, standby (pg_basebackup -R) and PgBouncer on free ports, as the
# unprivileged user authz-test when run as root, and stops them at exit. Needs the
# PostgreSQL server binaries and pgbouncer (Debian: postgresql, pgbouncer). Builds the
# examples and authzd with the dev profile (these numbers are dominated by PostgreSQL and
# the poll interval, not by authzd's code); set PROFILE=release to use release builds,
# CARGO to wrap cargo (e.g. CARGO="flock -o /tmp/cargo.lock cargo").
set -euo pipefail

tenants=${1:-10000}
per_tenant=${2:-100}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
die() { echo "bench-replicas: ERROR: $*" >&2; exit 1; }

bindir=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")")
[[ -x "$bindir/pg_basebackup" ]] || die "PostgreSQL server binaries not found (apt-get install postgresql)"
pgbouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
[[ -x "$pgbouncer" ]] || die "pgbouncer not found (apt-get install pgbouncer)"

profile=${PROFILE:-dev}
${CARGO:-cargo} build --quiet --profile "$profile" --bin authzd --example replicas --example pg_load
target=${CARGO_TARGET_DIR:-$root/target}/$([[ $profile == dev ]] && echo debug || echo "$profile")
authzd="$target/authzd"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/authz-bench-replicas.XXXXXX)
run=()
if [[ $(id -u) == 0 ]]; then
    id authz-test >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin authz-test
    chown authz-test "$dir"
    run=(runuser -u authz-test --)
fi
p1=$(free_port); p2=$(free_port); p3=$(free_port)
cleanup() {
    [[ -f "$dir/pgbouncer.pid" ]] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    "${run[@]}" "$bindir/pg_ctl" -D "$dir/standby" -m immediate stop >/dev/null 2>&1 || true
    "${run[@]}" "$bindir/pg_ctl" -D "$dir/primary" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
start() { # data-dir port
    "${run[@]}" "$bindir/pg_ctl" -D "$1" -l "$1.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $2 -k $dir -c max_connections=300" start >/dev/null
}

echo "== servers (primary :$p1, standby :$p2, pgbouncer -> standby :$p3)"
"${run[@]}" "$bindir/initdb" -D "$dir/primary" -U postgres --auth=trust >/dev/null
start "$dir/primary" "$p1"
primary=postgres://postgres@127.0.0.1:$p1
"${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$p1" -U postgres authz_bench
"${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$p1" -U postgres authz_small
"$authzd" migrate --database-url "$primary/authz_bench" >/dev/null
"$authzd" migrate --database-url "$primary/authz_small" >/dev/null
echo "== dataset: $tenants tenants x $per_tenant assignments"
"$authzd" gen-dataset --database-url "$primary/authz_bench" --tenants "$tenants" \
    --assignments-per-tenant "$per_tenant" --seed 1 >/dev/null
"${run[@]}" "$bindir/pg_basebackup" -h 127.0.0.1 -p "$p1" -U postgres -D "$dir/standby" -R -X stream -c fast
start "$dir/standby" "$p2"
standby=postgres://postgres@127.0.0.1:$p2
cat > "$dir/pgbouncer.ini" <<INI
[databases]
authz_small = host=127.0.0.1 port=$p2 dbname=authz_small
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $p3
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 1000
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
ignore_startup_parameters = extra_float_digits
INI
echo '"postgres" ""' > "$dir/users.txt"
[[ ${#run[@]} -gt 0 ]] && chown authz-test "$dir/pgbouncer.ini" "$dir/users.txt"
"${run[@]}" "$pgbouncer" -d "$dir/pgbouncer.ini"
for _ in $(seq 100); do [[ -f "$dir/pgbouncer.pid" ]] && break; sleep 0.1; done
pooler=postgres://postgres@127.0.0.1:$p3
postmaster=$(head -1 "$dir/standby/postmaster.pid")

echo "== memory: full load from the standby"
for shard in "" 0/2 0/10; do
    "$target/examples/pg_load" "$standby/authz_bench" $shard | grep -E 'serving|tenants|assignments|load time|resident growth|per assignment'
done

echo "== write on the primary -> visible in a replica polling the standby"
"$target/examples/replicas" lag "$primary/authz_small" "$standby/authz_small" 50 200
"$target/examples/replicas" lag "$primary/authz_small" "$standby/authz_small" 200 200
"$target/examples/replicas" lag "$primary/authz_small" "$standby/authz_small" 1000 60
echo "== the same, read your writes: waiting as a request with min_revision does"
"$target/examples/replicas" lag "$primary/authz_small" "$standby/authz_small" 200 200 wait
"$target/examples/replicas" lag "$primary/authz_small" "$standby/authz_small" 1000 100 wait

echo "== database load of polling replicas (no writes), 200 ms"
for n in 1 10 50; do
    "$target/examples/replicas" load "$pooler/authz_small" "$standby/authz_small" "$postmaster" "$n" 20 200 "$(cat "$dir/pgbouncer.pid")"
done
echo "(directly to the standby, without PgBouncer)"
"$target/examples/replicas" load "$standby/authz_small" "$standby/authz_small" "$postmaster" 50 20 200
echo "== WAL written by the dataset: $("${run[@]}" "$bindir/psql" -h 127.0.0.1 -p "$p1" -U postgres -Atc "SELECT pg_size_pretty(pg_current_wal_lsn() - '0/0')") (since initdb)"
