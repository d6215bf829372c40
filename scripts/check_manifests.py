#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests for authz, offline.

Run by scripts/validate-manifests.sh inside its tools venv (needs kubernetes-validate).
Two kinds of checks:

* schema: every object against the Kubernetes OpenAPI JSON schemas bundled with
  kubernetes-validate, in strict mode (unknown fields are errors), for each requested
  Kubernetes version. A kind without a bundled schema is an error, not a warning.
* consistency: what a schema cannot see: selectors that match the pods, Service
  target ports that exist, the policy ConfigMap mounted where --policy points, gRPC
  probes on the port authzd listens on (and not on loopback, which the kubelet cannot
  reach) or, with TLS on, exec probes running `authzd health --tls-ca ...` on it, the
  hardened securityContext, and the topology-specific parts of the `central`,
  `central-tls` and `sidecar` renders.

Usage:
  check_manifests.py --versions 1.30 1.37 \
      --render base base.yaml --render central central.yaml --render sidecar sidecar.yaml \
      --schema-only deploy/kubernetes/overlays/central/secret.example.yaml

Prints one line per check and a closing `manifests: N passed, N failed`; exits 1 on
any failure.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from typing import Any, Callable, Iterable

import yaml
from kubernetes_validate import utils as kv

AUTHZ_CONTAINER = "authzd"
AUTHZ_SERVICE = "authz.v1.AuthorizationService"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


class Checker:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, label: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {label}")
        else:
            self.failed += 1
            print(f"FAIL  {label}" + (f": {detail}" if detail else ""))
        return ok


def load(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def obj_name(o: dict[str, Any]) -> str:
    return f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------- schema


def schema_checks(c: Checker, tag: str, objs: list[dict[str, Any]], versions: list[str]) -> None:
    for o in objs:
        for v in versions:
            label = f"[{tag}] schema {obj_name(o)} (Kubernetes {v}, strict)"
            try:
                kv.validate(o, v, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                c.check(False, label, f"{path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                c.check(False, label, e.message)
            except (kv.VersionNotSupportedError, kv.InvalidSchemaError) as e:
                c.check(False, label, e.message)
            except Exception as e:  # noqa: BLE001 - report anything else as a failure
                c.check(False, label, f"{type(e).__name__}: {e}")
            else:
                c.check(True, label)


# ---------------------------------------------------------------- helpers


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]


def pod_spec(w: dict[str, Any]) -> dict[str, Any]:
    return w["spec"]["template"].get("spec", {})


def pod_labels(w: dict[str, Any]) -> dict[str, str]:
    return w["spec"]["template"].get("metadata", {}).get("labels", {}) or {}


def all_containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("initContainers", x) for x in spec.get("initContainers", []) or []] + [
        ("containers", x) for x in spec.get("containers", []) or []
    ]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", []) or []}


def arg_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def exec_health_args(probe: dict[str, Any] | None) -> list[str] | None:
    """The arguments after `health` of an exec probe running `authzd health`, else None."""
    command = [str(a) for a in ((probe or {}).get("exec") or {}).get("command", []) or []]
    if len(command) >= 2 and posixpath.basename(command[0]) == "authzd" and command[1] == "health":
        return command[2:]
    return None


def split_listen(addr: str) -> tuple[str, int | None]:
    host, _, port = addr.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        return host, None


def duration_seconds(text: str) -> float | None:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * units[suffix]
            except ValueError:
                return None
    return None


def container_ports(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for _, ct in all_containers(spec) for p in ct.get("ports", []) or []]


def port_matches(target: Any, ports: list[dict[str, Any]]) -> bool:
    if isinstance(target, int):
        return any(p.get("containerPort") == target for p in ports)
    return any(p.get("name") == target for p in ports)


# ---------------------------------------------------------------- generic consistency


def consistency_checks(c: Checker, tag: str, objs: list[dict[str, Any]]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    wls = workloads(objs)
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}

    c.check("Secret" not in by_kind, f"[{tag}] ships no Secret objects",
            "found " + ", ".join(obj_name(o) for o in by_kind.get("Secret", [])))

    for w in wls:
        n = obj_name(w)
        sel = w["spec"].get("selector", {}).get("matchLabels", {})
        c.check(selects(sel, pod_labels(w)), f"[{tag}] {n}: selector matches its pod labels")
        spec = pod_spec(w)
        names = [p["name"] for p in container_ports(spec) if "name" in p]
        c.check(len(names) == len(set(names)) and all(len(x) <= 15 for x in names),
                f"[{tag}] {n}: container port names unique in the pod and <= 15 chars",
                str(names))
        for vol in spec.get("volumes", []) or []:
            if "configMap" in vol:
                cm = vol["configMap"]
                c.check(cm["name"] in configmaps or cm.get("optional") is True,
                        f"[{tag}] {n}: volume {vol['name']} -> ConfigMap {cm['name']} is rendered")
            if "secret" in vol:
                c.check(vol["secret"].get("optional") is True,
                        f"[{tag}] {n}: volume {vol['name']} -> Secret is optional")
        for _, ct in all_containers(spec):
            for e in ct.get("env", []) or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    c.check(ref.get("optional") is True,
                            f"[{tag}] {n}/{ct['name']}: env {e['name']} secretKeyRef is optional")
        for _, ct in all_containers(spec):
            if ct["name"] == AUTHZ_CONTAINER:
                authzd_checks(c, tag, w, ct, configmaps)

    for s in by_kind.get("Service", []):
        n = obj_name(s)
        matched = [w for w in wls if selects(s["spec"].get("selector", {}), pod_labels(w))]
        if not c.check(bool(matched), f"[{tag}] {n}: selector matches a workload's pods"):
            continue
        for p in s["spec"].get("ports", []):
            target = p.get("targetPort", p.get("port"))
            c.check(all(port_matches(target, container_ports(pod_spec(w))) for w in matched),
                    f"[{tag}] {n}: port {p.get('name', p['port'])} targets a container port "
                    f"({target})")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        c.check(any(selects(sel, pod_labels(w)) for w in wls),
                f"[{tag}] {obj_name(pdb)}: selector matches a workload's pods")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        target = [w for w in wls if w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"]]
        if not c.check(bool(target), f"[{tag}] {obj_name(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} is rendered"):
            continue
        uses_cpu = any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
                       for m in hpa["spec"].get("metrics", []))
        if uses_cpu:
            cts = [ct for _, ct in all_containers(pod_spec(target[0]))]
            c.check(all("cpu" in (ct.get("resources", {}).get("requests") or {}) for ct in cts),
                    f"[{tag}] {obj_name(hpa)}: every target container requests CPU (Utilization needs it)")


def authzd_checks(c: Checker, tag: str, w: dict[str, Any], ct: dict[str, Any],
                  configmaps: dict[str, dict[str, Any]]) -> None:
    n = f"{obj_name(w)}/{AUTHZ_CONTAINER}"
    spec = pod_spec(w)
    psc = spec.get("securityContext", {}) or {}
    csc = ct.get("securityContext", {}) or {}

    def eff(key: str) -> Any:
        return csc[key] if key in csc else psc.get(key)

    c.check(eff("runAsNonRoot") is True, f"[{tag}] {n}: runAsNonRoot")
    c.check(csc.get("readOnlyRootFilesystem") is True, f"[{tag}] {n}: readOnlyRootFilesystem")
    c.check(csc.get("allowPrivilegeEscalation") is False, f"[{tag}] {n}: allowPrivilegeEscalation false")
    c.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), f"[{tag}] {n}: drops ALL capabilities")
    c.check((eff("seccompProfile") or {}).get("type") == "RuntimeDefault", f"[{tag}] {n}: seccompProfile RuntimeDefault")

    res = ct.get("resources", {}) or {}
    c.check(all(k in (res.get("requests") or {}) for k in ("cpu", "memory"))
            and "memory" in (res.get("limits") or {}),
            f"[{tag}] {n}: CPU/memory requests and a memory limit", str(res))

    env = env_map(ct)
    listen = (env.get("AUTHZ_LISTEN") or {}).get("value")
    args = [str(a) for a in ct.get("args", []) or []]
    if not c.check(listen is not None, f"[{tag}] {n}: AUTHZ_LISTEN is set"):
        return
    host, port = split_listen(listen)
    c.check(host not in LOOPBACK_HOSTS,
            f"[{tag}] {n}: listens beyond loopback ({listen}), so the kubelet's probes reach it",
            "kubelet gRPC probes connect to the pod IP")
    c.check(any(p.get("containerPort") == port for p in ct.get("ports", []) or []),
            f"[{tag}] {n}: containerPort {port} declared")
    tls = "AUTHZ_TLS_CERT" in env or "--tls-cert" in args
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = ct.get(kind)
        if tls:
            # The kubelet's gRPC probe speaks plaintext only: over TLS, `authzd health`.
            health = exec_health_args(probe)
            ok = health is not None and split_listen(arg_value(health, "--addr") or "")[1] == port
            c.check(ok, f"[{tag}] {n}: {kind} execs `authzd health` on port {port} (TLS)", str(probe))
            if not ok:
                continue
            c.check(arg_value(health, "--tls-ca") is not None,
                    f"[{tag}] {n}: {kind} verifies the server certificate (--tls-ca)")
            service = arg_value(health, "--service") or ""
        else:
            ok = bool(probe) and "grpc" in probe and probe["grpc"].get("port") == port
            c.check(ok, f"[{tag}] {n}: {kind} is a gRPC probe on port {port}", str(probe))
            if not ok:
                continue
            service = probe["grpc"].get("service", "")
        if kind != "livenessProbe":
            c.check(service in ("", AUTHZ_SERVICE),
                    f"[{tag}] {n}: {kind} asks a health service authzd reports")

    grace = duration_seconds((env.get("AUTHZ_SHUTDOWN_GRACE") or {}).get("value", "10s")) or 10
    pre_stop = (((ct.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    c.check(tgps > grace + pre_stop,
            f"[{tag}] {n}: terminationGracePeriodSeconds {tgps} > preStop {pre_stop}s + shutdown grace {grace:g}s")

    policy = arg_value(args, "--policy") or (env.get("AUTHZ_POLICY") or {}).get("value")
    if not c.check(policy is not None, f"[{tag}] {n}: --policy / AUTHZ_POLICY given"):
        return
    policy_dir, policy_file = posixpath.split(policy)
    mounts = [m for m in ct.get("volumeMounts", []) or [] if m["mountPath"].rstrip("/") == policy_dir]
    vols = {v["name"]: v for v in spec.get("volumes", []) or []}
    mount_ok = (len(mounts) == 1 and "subPath" not in mounts[0] and "subPathExpr" not in mounts[0]
                and "configMap" in vols.get(mounts[0]["name"], {}))
    if not c.check(mount_ok, f"[{tag}] {n}: {policy_dir} is a ConfigMap directory mount (no subPath: hot reload)"):
        return
    cm_name = vols[mounts[0]["name"]]["configMap"]["name"]
    cm = configmaps.get(cm_name)
    data = (cm or {}).get("data", {}) or {}
    if not c.check(policy_file in data, f"[{tag}] {n}: ConfigMap {cm_name} has key {policy_file}"):
        return
    try:
        doc = yaml.safe_load(data[policy_file])
        ok = isinstance(doc, dict) and doc.get("version") == 1
        detail = "" if ok else "no `version: 1` at the top level"
    except yaml.YAMLError as e:
        ok, detail = False, str(e)
    c.check(ok, f"[{tag}] {n}: policy document parses as YAML with version 1", detail)

    if any(x is ct for x in spec.get("initContainers", []) or []):
        c.check(ct.get("restartPolicy") == "Always",
                f"[{tag}] {n}: init container is a native sidecar (restartPolicy: Always)")


# ---------------------------------------------------------------- topology-specific


def authz_workload(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    for w in workloads(objs):
        for _, ct in all_containers(pod_spec(w)):
            if ct["name"] == AUTHZ_CONTAINER:
                return w, ct
    return None


def central_checks(c: Checker, tag: str, objs: list[dict[str, Any]]) -> None:
    found = authz_workload(objs)
    if not c.check(found is not None, f"[{tag}] an authzd Deployment is rendered"):
        return
    w, ct = found
    labels = pod_labels(w)
    c.check(w["spec"].get("replicas", 1) >= 3, f"[{tag}] replicas >= 3")
    keys = {t["topologyKey"] for t in pod_spec(w).get("topologySpreadConstraints", []) or []
            if selects(t.get("labelSelector", {}).get("matchLabels", {}), labels)}
    c.check({"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys,
            f"[{tag}] topologySpreadConstraints over zone and hostname", str(keys))
    svcs = [s for s in objs if s["kind"] == "Service" and selects(s["spec"].get("selector", {}), labels)]
    c.check(any(s["spec"].get("clusterIP") == "None" for s in svcs),
            f"[{tag}] a headless Service (clusterIP: None) selects the pods")
    c.check(any(s["spec"].get("clusterIP") != "None" and s["spec"].get("type", "ClusterIP") == "ClusterIP"
                for s in svcs), f"[{tag}] a ClusterIP Service selects the pods")
    c.check(any(o["kind"] == "PodDisruptionBudget" for o in objs), f"[{tag}] a PodDisruptionBudget")
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    c.check(any(h["apiVersion"] == "autoscaling/v2" and h["spec"].get("minReplicas", 1) >= 3 for h in hpas),
            f"[{tag}] an autoscaling/v2 HPA with minReplicas >= 3")
    env = env_map(ct)
    c.check("secretKeyRef" in ((env.get("AUTHZ_DATABASE_URL") or {}).get("valueFrom") or {}),
            f"[{tag}] AUTHZ_DATABASE_URL comes from a Secret")
    ann = w["spec"]["template"].get("metadata", {}).get("annotations", {}) or {}
    metrics_port = split_listen((env.get("AUTHZ_METRICS_LISTEN") or {}).get("value", ""))[1]
    c.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(metrics_port),
            f"[{tag}] Prometheus annotations point at AUTHZ_METRICS_LISTEN's port ({metrics_port})")


def central_tls_checks(c: Checker, tag: str, objs: list[dict[str, Any]]) -> None:
    central_checks(c, tag, objs)
    found = authz_workload(objs)
    if found is None:
        return
    w, ct = found
    env = env_map(ct)
    cert = (env.get("AUTHZ_TLS_CERT") or {}).get("value")
    key = (env.get("AUTHZ_TLS_KEY") or {}).get("value")
    if not c.check(bool(cert and key), f"[{tag}] AUTHZ_TLS_CERT and AUTHZ_TLS_KEY are set"):
        return
    vols = {v["name"]: v for v in pod_spec(w).get("volumes", []) or []}
    for path in (cert, key):
        directory = posixpath.dirname(path)
        mounts = [m for m in ct.get("volumeMounts", []) or [] if m["mountPath"].rstrip("/") == directory]
        c.check(len(mounts) == 1 and "secret" in vols.get(mounts[0]["name"], {}),
                f"[{tag}] {path} comes from a mounted Secret")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        health = exec_health_args(ct.get(kind)) or []
        ca = arg_value(health, "--tls-ca") or ""
        c.check(any(m["mountPath"].rstrip("/") == posixpath.dirname(ca) for m in ct.get("volumeMounts", []) or []),
                f"[{tag}] {kind}'s --tls-ca {ca} is in a mounted volume")


def sidecar_checks(c: Checker, tag: str, objs: list[dict[str, Any]]) -> None:
    found = authz_workload(objs)
    if not c.check(found is not None, f"[{tag}] an application Deployment with the authzd sidecar is rendered"):
        return
    w, ct = found
    spec = pod_spec(w)
    c.check(any(x is ct for x in spec.get("initContainers", []) or []),
            f"[{tag}] authzd is a native sidecar (in initContainers)")
    c.check(any(x["name"] != AUTHZ_CONTAINER for x in spec.get("containers", []) or []),
            f"[{tag}] the application container is still there")
    port = split_listen(env_map(ct)["AUTHZ_LISTEN"]["value"])[1]
    port_names = {p.get("name") for p in ct.get("ports", []) or []}
    labels = pod_labels(w)
    for s in (o for o in objs if o["kind"] == "Service" and selects(o["spec"].get("selector", {}), labels)):
        targets = {p.get("targetPort", p.get("port")) for p in s["spec"].get("ports", [])}
        c.check(not (targets & ({port} | port_names)),
                f"[{tag}] {obj_name(s)} does not expose authzd's port {port}", str(targets))
    nps = [o for o in objs if o["kind"] == "NetworkPolicy"
           and selects(o["spec"].get("podSelector", {}).get("matchLabels", {}), labels)]
    if not c.check(bool(nps), f"[{tag}] a NetworkPolicy selects the application pods"):
        return
    for np in nps:
        rules = np["spec"].get("ingress", []) or []
        leaks = [r for r in rules
                 if not r.get("ports") or any(p.get("port") in ({port} | port_names) for p in r["ports"])]
        c.check("Ingress" in np["spec"].get("policyTypes", ["Ingress"]) and not leaks,
                f"[{tag}] {obj_name(np)} admits no other pod to port {port}", str(leaks))


def sidecar_replica_checks(c: Checker, tag: str, objs: list[dict[str, Any]]) -> None:
    """The sidecar following a standby through a transaction pooler: everything the
    sidecar is, plus a database URL from a Secret, polling (LISTEN does not
    pass a transaction pooler), a bounded staleness, and no admin API (a standby refuses
    writes)."""
    sidecar_checks(c, tag, objs)
    found = authz_workload(objs)
    if found is None:
        return
    _, ct = found
    env = env_map(ct)
    ref = ((env.get("AUTHZ_DATABASE_URL") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    c.check(bool(ref), f"[{tag}] AUTHZ_DATABASE_URL comes from a Secret")
    c.check((env.get("AUTHZ_FOLLOW") or {}).get("value") == "poll",
            f"[{tag}] AUTHZ_FOLLOW is poll (no LISTEN through a transaction pooler)")
    staleness = duration_seconds((env.get("AUTHZ_MAX_STALENESS") or {}).get("value", "0s")) or 0
    c.check(staleness > 0, f"[{tag}] AUTHZ_MAX_STALENESS bounds how old an answer may be")
    c.check("AUTHZ_ADMIN_TOKENS_FILE" not in env, f"[{tag}] no admin API on a replica of a standby")


PROFILES: dict[str, Callable[[Checker, str, list[dict[str, Any]]], None]] = {
    "central": central_checks,
    "central-tls": central_tls_checks,
    "sidecar": sidecar_checks,
    "sidecar-replica": sidecar_replica_checks,
}


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", nargs="+", required=True, help="Kubernetes versions, e.g. 1.30 1.37")
    ap.add_argument("--render", nargs=2, action="append", default=[], metavar=("NAME", "FILE"),
                    help="a rendered kustomization; NAME central/sidecar adds topology checks")
    ap.add_argument("--schema-only", action="append", default=[], metavar="FILE",
                    help="a manifest checked against the schemas only (e.g. an example Secret)")
    args = ap.parse_args(list(argv) if argv is not None else None)

    c = Checker()
    for name, path in args.render:
        objs = load(path)
        c.check(bool(objs), f"[{name}] rendered objects: {len(objs)}")
        schema_checks(c, name, objs, args.versions)
        consistency_checks(c, name, objs)
        if name in PROFILES:
            PROFILES[name](c, name, objs)
    for path in args.schema_only:
        schema_checks(c, posixpath.basename(path), load(path), args.versions)

    print(f"manifests: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
