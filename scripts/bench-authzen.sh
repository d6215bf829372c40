#!/usr/bin/env bash
# AuthZEN evaluation over HTTP/1.1 keep-alive (wrk) beside the gRPC Check (the shared
# load generator), on one authzd serving both, in alternating rounds; docs/benchmarks.md.
#
#   scripts/bench-authzen.sh [ROUNDS] [SECONDS]      # defaults: 3 rounds, 10 s windows
#
# Needs: cargo, wrk (Debian: apt-get install wrk), taskset, python3, and the load
# generator that scripts/bench-loadgen.sh builds (run that once first, or set LG=path).
# wrk on CPU 0, authzd on CPU 1; server CPU per request is read from /proc around each
# window. Run it on an otherwise idle machine.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rounds=${1:-3}
secs=${2:-10}
lg=${LG:-$root/target/loadgen/target/release/loadgen}
die() { printf 'bench-authzen.sh: ERROR: %s\n' "$*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk not found (Debian: apt-get install wrk)"
[[ -x "$lg" ]] || die "no load generator at $lg: run scripts/bench-loadgen.sh once, or set LG"
cargo build --release --quiet --bin authzd

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gp=$(port); hp=$(port)
taskset -c 1 target/release/authzd serve --policy examples/policies/chat-api.yaml \
    --listen "127.0.0.1:$gp" --http-listen "127.0.0.1:$hp" >/dev/null 2>&1 & a=$!
trap 'kill $a 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$hp") 2>/dev/null && break; sleep 0.2; done

lua=$(mktemp --suffix .lua)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"subject":{"type":"user","id":"carl"},"action":{"name":"PUT"},"resource":{"type":"route","id":"/experts/e-1"}}'
LUA
ticks() { awk '{print $14 + $15}' "/proc/$a/stat"; }
hz=$(getconf CLK_TCK)
out=${OUT:-$root/target/bench-authzen.txt}
: > "$out"
for r in $(seq "$rounds"); do
    echo "round $r of $rounds"
    t0=$(ticks)
    res=$(taskset -c 0 wrk -t1 -c16 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$hp/tenants/acme/access/v1/evaluation")
    t1=$(ticks)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
    p50=$(awk '/ 50%/ {print $2}' <<<"$res")
    non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$res")
    echo "authzen c16 rps=$rps p50=$p50 cpu_s=$(( t1 - t0 ))/$hz non2xx=${non2xx:-0}" | tee -a "$out"
    t0=$(ticks)
    json=$(taskset -c 0 "$lg" run --target authz --addr "http://127.0.0.1:$gp" -c 16 -k 2 -d "$secs" -w 0 \
        --tenant acme --subject carl --method PUT --path /experts/e-1 2>/dev/null)
    t1=$(ticks)
    rps=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["rps"], d["latency_us"]["p50"], d["errors"])' "$json")
    echo "grpc c16 rps,p50_us,errors=$rps cpu_s=$(( t1 - t0 ))/$hz" | tee -a "$out"
done
python3 - "$out" "$secs" <<'PY'
import re, statistics, sys
rows = open(sys.argv[1]).read().splitlines()
secs = float(sys.argv[2])
def per_call(line):
    num, den = re.search(r"cpu_s=(\d+)/(\d+)", line).groups()
    cpu = int(num) / int(den)
    rps = float(re.search(r"rps(?:,p50_us,errors)?=([\d.]+)", line).group(1))
    return cpu / (rps * secs) * 1e6
for kind in ("authzen", "grpc"):
    xs = [per_call(l) for l in rows if l.startswith(kind)]
    if xs:
        print(f"{kind}: server CPU per request median {statistics.median(xs):.1f} µs (range {min(xs):.1f}-{max(xs):.1f}), {len(xs)} rounds")
PY
