#!/usr/bin/env bash
# What migration V6's deletion tracking (table authz_deleted, statement-level triggers)
# costs writers: the same tenant (50,000 subjects, 50,000 assignments) applied, deleted
# through SQL (a cascade of 100,002 rows) and applied again, side by side, on a database
# with the triggers and one with them dropped. Rounds alternate between the two.
#
#   scripts/bench-deletions.sh [ROUNDS] [AUTHZD]
#
# Needs: psql and a PostgreSQL at $PGURL (default postgres://postgres@127.0.0.1:5432),
# where it creates and drops the databases bench_deletions_on and bench_deletions_off.
# AUTHZD defaults to target/debug/authzd (the database does the work measured; the
# binary is the same on both sides). Prints seconds per step and round.
set -euo pipefail

rounds=${1:-5}
authzd=${2:-target/debug/authzd}
base=${PGURL:-postgres://postgres@127.0.0.1:5432}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$tmp/big.yaml" <<'EOF'
import sys
n = 50000
out = ["version: 1", "tenants:", "  - id: big", "    roles:", "      - id: editor",
       "        permissions: [doc.edit]", "    subjects:"]
out += [f"      - id: u{i}" for i in range(n)]
out.append("    assignments:")
out += [f"      - subject: u{i}\n        role: editor\n        scope: ws-{i % 100}" for i in range(n)]
open(sys.argv[1], "w").write("\n".join(out) + "\n")
EOF

for db in on off; do
    psql -q "$base/postgres" -c "DROP DATABASE IF EXISTS bench_deletions_$db" \
        -c "CREATE DATABASE bench_deletions_$db"
    "$authzd" migrate --database-url "$base/bench_deletions_$db" >/dev/null
done
psql -q "$base/bench_deletions_off" -c "DO \$\$ DECLARE t text; k text; BEGIN
    FOREACH t IN ARRAY ARRAY['tenants','roles','role_includes','role_permissions',
        'role_routes','endpoints','default_roles','subjects','groups','group_members',
        'assignments'] LOOP
        FOREACH k IN ARRAY ARRAY['insert','update','delete'] LOOP
            EXECUTE format('DROP TRIGGER %I ON %I', t || '_deletion_' || k, t);
        END LOOP;
    END LOOP; END \$\$"

seconds() {
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; exit 1; }
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}

echo "round tracking apply sql-delete-tenant apply-again(--force)"
for round in $(seq "$rounds"); do
    for db in off on; do
        url="$base/bench_deletions_$db"
        psql -q "$url" -c "DELETE FROM tenants WHERE id = 'big'" -c "DELETE FROM authz_deleted"
        a=$(seconds "$authzd" policy apply --database-url "$url" "$tmp/big.yaml")
        d=$(seconds psql -q "$url" -c "DELETE FROM tenants WHERE id = 'big'")
        f=$(seconds "$authzd" policy apply --database-url "$url" --force "$tmp/big.yaml")
        echo "$round $db $a $d $f"
    done
done

for db in on off; do
    psql -q "$base/postgres" -c "DROP DATABASE bench_deletions_$db"
done
