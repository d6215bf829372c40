#!/usr/bin/env bash
# Builds the container image of deploy/Dockerfile without Docker, runs it once, and
# prints its size:
#
#   scripts/build-image.sh [NAME:TAG]        (default authzd:dev)
#
# 1. `cargo build --profile image --locked --bin authzd` on this machine (Debian 12, as
#    the Dockerfile's rust:1-bookworm builder).
# 2. deploy/rootfs.sh assembles the runtime filesystem from it, as the builder stage does.
# 3. buildah builds the Dockerfile's own runtime stage (`--target runtime`: FROM scratch,
#    COPY --from=builder /rootfs /, LABEL, USER, ENV, EXPOSE, ENTRYPOINT, CMD) with the
#    stage `builder` replaced by the directory of step 2 (`--build-context`), so the image
#    has the Dockerfile's contents and configuration without the Rust builder image, and
#    writes it as an OCI image layout.
# 4. As root: runs it as `docker run` would, from the image's configuration alone (umoci
#    unpacks it into a runtime bundle: user 65532, environment, entrypoint and command),
#    with runc, a read-only root and examples/policies/chat-api.yaml mounted at
#    /etc/authz/policy.yaml; `authzd health` inside must answer SERVING, and SIGTERM must
#    stop it with exit 0.
# 5. Prints the compressed layer (what a registry stores and a node pulls), the layer
#    unpacked, and the binary.
#
# Output in ${CARGO_TARGET_DIR:-target}/oci-image/: `oci/` (the OCI image layout, ref
# NAME:TAG), `context/rootfs/` (the image's files), buildah's storage. Push the layout
# with any OCI tool, e.g. `skopeo copy oci:target/oci-image/oci:authzd:dev
# docker://REGISTRY/authzd:TAG`.
#
# Needs: cargo, ldd and dpkg-query (Debian), python3, and buildah, umoci and runc, which
# are installed with apt-get when missing and we are root. CARGO wraps cargo (e.g.
# CARGO="flock -o /tmp/cargo.lock cargo").
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
step() { printf '\n==> %s\n' "$*"; }
die() { printf 'build-image.sh: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -le 1 ]] || die "usage: scripts/build-image.sh [NAME:TAG]"
tag=${1:-authzd:dev}
[[ "$tag" == *:* ]] || die "NAME:TAG, e.g. authzd:dev (got $tag)"
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/oci-image
read -ra cargo <<<"${CARGO:-cargo}"
as_root=false
[[ $(id -u) == 0 ]] && as_root=true

step "tools"
missing=()
for tool in buildah umoci runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if ! $as_root || ! command -v apt-get >/dev/null; then
        die "missing: ${missing[*]} (Debian: apt-get install ${missing[*]})"
    fi
    echo "installing ${missing[*]} (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
buildah --version
umoci --version

step "cargo build --profile image --locked --bin authzd"
"${cargo[@]}" build --profile image --locked --bin authzd
bin=$target/image/authzd

step "runtime filesystem (deploy/rootfs.sh)"
rm -rf "$out"
mkdir -p "$out/context" "$out/empty"
bash deploy/rootfs.sh "$bin" "$out/context/rootfs"
(cd "$out/context/rootfs" && find . -mindepth 1 ! -type d | sort)

step "buildah build --target runtime -f deploy/Dockerfile"
# A storage of its own (vfs: no kernel overlay or FUSE needed), deleted with $out.
buildah=(buildah --root "$out/storage" --runroot "$out/run" --storage-driver vfs)
"${buildah[@]}" build --quiet --target runtime --build-context "builder=$out/context" \
    -f deploy/Dockerfile -t "$tag" "$out/empty"
"${buildah[@]}" push --quiet "$tag" "oci:$out/oci:$tag"
echo "wrote $out/oci ($tag)"

step "run the image (runc)"
if $as_root; then
    umoci unpack --image "$out/oci:$tag" "$out/bundle" >/dev/null
    # As `docker run --read-only -v .../chat-api.yaml:/etc/authz/policy.yaml:ro IMAGE`.
    python3 - "$out/bundle/config.json" "$root/examples/policies/chat-api.yaml" <<'PY'
import json, sys
path, policy = sys.argv[1:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["root"]["readonly"] = True
c["mounts"].append({"destination": "/etc/authz/policy.yaml", "type": "bind",
                    "source": policy, "options": ["bind", "ro"]})
json.dump(c, open(path, "w"), indent=1)
PY
    python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))["process"]; print("user", p["user"], "args", p["args"], "env", p["env"])' \
        "$out/bundle/config.json"
    id=authzd-image-$$
    trap 'runc delete --force "$id" >/dev/null 2>&1 || true' EXIT
    runc run --detach --bundle "$out/bundle" "$id" >"$out/run.log" 2>&1 </dev/null \
        || die "runc run failed: $(cat "$out/run.log")"
    # `authzd health` inside the container (its own network namespace), for 10 s at most.
    health=
    for _ in $(seq 50); do
        if health=$(runc exec "$id" /usr/local/bin/authzd health --addr 127.0.0.1:50051 \
            --service authz.v1.AuthorizationService); then
            break
        fi
        sleep 0.2
    done
    [[ "$health" == SERVING ]] || die "the image did not answer SERVING (last: $health); its log: $(cat "$out/run.log")"
    echo "authzd health inside the container: $health"
    runc kill "$id" TERM
    status() { runc state "$id" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'; }
    for _ in $(seq 75); do
        [[ $(status) == stopped ]] && break
        sleep 0.2
    done
    [[ $(status) == stopped ]] || die "still running 15 s after SIGTERM"
    cat "$out/run.log"
    grep -q 'drained; stopped' "$out/run.log" || die "no clean stop after SIGTERM"
    runc delete "$id"
    trap - EXIT
else
    echo "skipped: running the image with runc needs root"
fi

step "size"
python3 - "$out/oci" "$tag" "$bin" <<'PY'
import gzip, json, os, sys
layout, tag, binary = sys.argv[1:]
def blob(d):
    return os.path.join(layout, "blobs", *d["digest"].split(":"))
index = json.load(open(os.path.join(layout, "index.json")))
ref = next(d for d in index["manifests"]
           if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
manifest = json.load(open(blob(ref)))
config = json.load(open(blob(manifest["config"])))
layers = manifest["layers"]
assert len(layers) == 1, f"one layer expected, got {len(layers)}"
layer = layers[0]
assert layer["mediaType"].endswith("tar+gzip"), layer["mediaType"]
unpacked = 0
with gzip.open(blob(layer)) as f:
    while chunk := f.read(1 << 20):
        unpacked += len(chunk)
mb = lambda n: f"{n / 1e6:.1f} MB ({n:,} bytes)"
c = config["config"]
print(f"image {tag}: {config['architecture']}/{config['os']}, user {c.get('User')}, "
      f"entrypoint {c.get('Entrypoint')}, cmd {c.get('Cmd')}, env {c.get('Env')}, "
      f"ports {sorted(c.get('ExposedPorts', {}))}")
print(f"compressed layer (gzip; pulled and stored): {mb(layer['size'])}")
print(f"  with manifest and config:                 {mb(layer['size'] + ref['size'] + manifest['config']['size'])}")
print(f"layer unpacked (tar):                       {mb(unpacked)}")
print(f"authzd binary (--profile image):            {mb(os.path.getsize(binary))}")
PY
