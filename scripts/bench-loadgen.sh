#!/usr/bin/env bash
# Reproduces the side-by-side table of docs/benchmarks.md ("Against a do-nothing gRPC
# call"): a do-nothing tonic unary call ("echo") and authzd, measured in alternating
# rounds with the shared load generator, client pinned to CPU 0 and servers to CPU 1.
#
#   scripts/bench-loadgen.sh [ROUNDS] [SECONDS]      # defaults: 3 rounds, 10 s windows
#
# Needs: cargo, taskset (util-linux), python3, and ../shared/tools/loadgen beside the
# repository (or LOADGEN_SRC=DIR). Builds the load generator in a temporary directory
# (with stubs from this repository's proto) and authzd in release mode. Prints one JSON
# line per run to $OUT (default target/bench-loadgen.jsonl) and a table of medians and
# ranges. Run it on an otherwise idle machine: nothing else should compete for the CPUs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rounds=${1:-3}
secs=${2:-10}
src=${LOADGEN_SRC:-$root/../shared/tools/loadgen}
out=${OUT:-$root/target/bench-loadgen.jsonl}
die() { printf 'bench-loadgen.sh: ERROR: %s\n' "$*" >&2; exit 1; }
[[ -d "$src" ]] || die "no load generator at $src (set LOADGEN_SRC)"
command -v taskset >/dev/null || die "taskset not found (Debian: apt-get install util-linux)"
[[ $(nproc) -ge 2 ]] || die "needs 2 CPUs (client on CPU 0, server on CPU 1)"

build=${LOADGEN_BUILD:-$root/target/loadgen}
mkdir -p "$build"
rsync -a --delete --exclude target "$src/" "$build/src-copy/" 2>/dev/null || {
    rm -rf "$build/src-copy"; cp -r "$src" "$build/src-copy"; rm -rf "$build/src-copy/target"; }
# The generator builds its BatchCheckRequest with a struct literal; fields this proto added
# since (`detail`) take their defaults.
python3 - "$build/src-copy/src/targets/authz.rs" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
i = s.find('pb::BatchCheckRequest {')
if i >= 0 and '..Default::default()' not in s[i:i + 600]:
    j = s.index('min_revision: 0,', i) + len('min_revision: 0,')
    s = s[:j] + '\n..Default::default()' + s[j:]
    open(p, 'w').write(s)
PY
echo "building the load generator ($build)"
(cd "$build/src-copy" && LOADGEN_AUTHZ_PROTO="$root/proto/authz/v1/authz.proto" \
    LOADGEN_AUTHZ_PROTO_INCLUDE="$root/proto" CARGO_TARGET_DIR="$build/target" \
    cargo build --release --quiet)
lg="$build/target/release/loadgen"
echo "building authzd (release)"
cargo build --release --quiet --bin authzd
authzd="$root/target/release/authzd"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ep=$(port); ap=$(port)
taskset -c 1 "$lg" serve-echo --addr "127.0.0.1:$ep" >/dev/null 2>&1 & e=$!; pids+=("$e")
taskset -c 1 "$authzd" serve --policy examples/policies/chat-api.yaml --listen "127.0.0.1:$ap" \
    >/dev/null 2>&1 & a=$!; pids+=("$a")
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ap") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$ep") 2>/dev/null && break
    sleep 0.2
done

: > "$out"
run() { # label, then loadgen run arguments
    local label=$1; shift
    taskset -c 0 "$lg" run --label "$label" -d "$secs" -w 3 --json-out "$out" "$@" >/dev/null
}
authz=(--target authz --addr "http://127.0.0.1:$ap" --server-pid "$a" --tenant acme --subject carl)
# The load generator's default route mix (granted and denied, distinct paths) plus named
# permissions, for one subject (carl, alan-contributor).
mix=(--batch-mix "PUT /experts/e-{i}=allow,GET /chats/c-{i}=allow,DELETE /experts/e-{i}=deny,GET /chats/c-{i}/messages/m-{i}/files/f-{i}/content=allow,PUT /connectors/c-1/knowledge-bases/kb-{i}=allow,DELETE /connectors/c-1/knowledge-bases/kb-{i}=deny,GET /groups/g-{i}=deny,GET /files/f-{i}/content=allow,POST /experts/=deny,GET /connectors/knowledge-bases=allow,chat.use=allow,experts.edit=allow,connectors.manage=deny")
for r in $(seq "$rounds"); do
    echo "round $r of $rounds"
    run "echo c16" --target echo --addr "http://127.0.0.1:$ep" --server-pid "$e" -c 16 -k 2
    run "check c16" "${authz[@]}" -c 16 -k 2 --method PUT --path /experts/e-1
    run "echo c1" --target echo --addr "http://127.0.0.1:$ep" --server-pid "$e" -c 1 -k 1
    run "check c1" "${authz[@]}" -c 1 -k 1 --method PUT --path /experts/e-1
    run "batch100 c1" "${authz[@]}" -c 1 -k 1 --authz-rpc batch --items 100 "${mix[@]}"
    run "batch1000 c4" "${authz[@]}" -c 4 -k 2 --authz-rpc batch --items 1000 "${mix[@]}"
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
def med(xs):
    return statistics.median(xs), min(xs), max(xs)
def fmt(t, unit, digits=1):
    m, lo, hi = t
    return f"{m:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f})"
print()
print("| run | rounds | p50 latency | server CPU per call | per decision | errors |")
print("| --- | --- | --- | --- | --- | --- |")
for label, rs in by.items():
    p50 = med([r["latency_us"]["p50"] for r in rs])
    cpu = med([r["server_cpu_pct"] / 100 / r["rps"] * 1e6 for r in rs])
    per = med([r["server_cpu_pct"] / 100 / r["decisions_per_s"] * 1e6 for r in rs])
    errors = sum(r["errors"] for r in rs)
    dec = fmt(per, "µs", 2) if rs[0]["decisions_per_call"] > 1 else "—"
    print(f"| {label} | {len(rs)} | {fmt(p50, 'µs', 0)} | {fmt(cpu, 'µs')} | {dec} | {errors} |")
for pair in (("echo c16", "check c16"),):
    if all(p in by for p in pair):
        e = statistics.median(r["server_cpu_pct"] / 100 / r["rps"] for r in by[pair[0]])
        c = statistics.median(r["server_cpu_pct"] / 100 / r["rps"] for r in by[pair[1]])
        print(f"\nCheck / echo server CPU per call at c16 (medians): {c / e:.2f}x")
if all(p in by for p in ("echo c1", "check c1")):
    e = statistics.median(r["latency_us"]["p50"] for r in by["echo c1"])
    c = statistics.median(r["latency_us"]["p50"] for r in by["check c1"])
    print(f"Check c1 p50 - echo c1 p50 (medians): {c - e:+.0f} µs")
busy = [r["system_cpu"]["busy_pct"] for r in rows]
print(f"machine busy during runs: {min(busy):.0f}-{max(busy):.0f}%")
PY
