#!/usr/bin/env python3
"""Validates an Envoy bootstrap config (deploy/envoy/envoy.yaml) offline.

1. Schema: the YAML is parsed into `envoy.config.bootstrap.v3.Bootstrap` with protobuf's
   JSON mapping, strictly (an unknown field, a wrong type or an unknown enum value is an
   error), every `typed_config` resolved through its "@type". The descriptors are
   Envoy's own, from the protoset the envoy-types crate ships (the crate authzd builds
   its ext_authz service from), so the config is checked against the same API version
   the server speaks. (Envoy's protoc-gen-validate rules are not checked.)
2. Wiring, which a schema cannot check: the ext_authz filter calls authzd over gRPC
   with API v3, fails closed, and runs before the router; its cluster exists, speaks
   HTTP/2 and health-checks the Envoy authorization service; every route's cluster
   exists.

    check_envoy_config.py --protoset types.bin deploy/envoy/envoy.yaml

Prints PASS/FAIL lines; exits non-zero on any failure.
"""

import argparse
import sys

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def load_pool(protoset):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(protoset, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    by_name = {f.name: f for f in fds.file}
    added = set()

    def add(name):
        # Dependencies first: the pool resolves imports as files are added.
        if name in added:
            return
        added.add(name)
        for dep in by_name[name].dependency:
            add(dep)
        pool.Add(by_name[name])

    for name in by_name:
        add(name)
    return pool


class Checks:
    def __init__(self):
        self.failed = 0

    def check(self, ok, what):
        print(("PASS " if ok else "FAIL ") + what)
        if not ok:
            self.failed += 1


LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"


def check_shards(c, hcm):
    """With several ext_authz filters (one per tenant shard, deploy/envoy/sharded.yaml):
    a Lua filter before them sets the shard header, every route that reaches an upstream
    matches one shard value and leaves exactly one ext_authz filter enabled, each filter
    serves exactly one shard value, and every other route answers directly."""
    filters = hcm.get("http_filters", [])
    authz = [f["name"] for f in filters if f.get("typed_config", {}).get("@type") == EXT_AUTHZ]
    if len(authz) < 2:
        return
    names = [f["name"] for f in filters]
    lua = [
        f for f in filters
        if f.get("typed_config", {}).get("@type") == LUA
    ]
    c.check(
        bool(lua) and names.index(lua[0]["name"]) < min(names.index(a) for a in authz),
        "a Lua filter computes the shard before the ext_authz filters",
    )
    source = lua[0]["typed_config"].get("default_source_code", {}).get("inline_string", "") if lua else ""
    c.check(
        "0xcbf29ce484222325ULL" in source and "0x100000001b3ULL" in source,
        "the Lua filter hashes with FNV-1a 64 (authzd's shard function)",
    )
    c.check(
        f"local SHARDS = {len(authz)}ULL" in source,
        f"the Lua filter splits into {len(authz)} shards, one per ext_authz filter",
    )
    c.check("clearRouteCache()" in source, "the Lua filter has the route chosen again")
    c.check('headers:remove("x-authz-shard")' in source, "a shard header sent by the client is dropped")
    served = {}
    for vhost in hcm.get("route_config", {}).get("virtual_hosts", []):
        for route in vhost.get("routes", []):
            disabled = {
                name
                for name, cfg in route.get("typed_per_filter_config", {}).items()
                if name in authz and cfg.get("disabled") is True
            }
            enabled = [a for a in authz if a not in disabled]
            if "direct_response" in route:
                c.check(not enabled, "a route answering directly runs no check")
                continue
            shard = [
                h.get("string_match", {}).get("exact")
                for h in route.get("match", {}).get("headers", [])
                if h.get("name") == "x-authz-shard"
            ]
            c.check(len(shard) == 1 and shard[0] is not None, "an upstream route matches one shard")
            c.check(len(enabled) == 1, f"shard {shard} runs exactly one ext_authz filter: {enabled}")
            if len(shard) == 1 and len(enabled) == 1:
                served.setdefault(enabled[0], set()).add(shard[0])
    for i, name in enumerate(authz):
        c.check(
            served.get(name) == {str(i)},
            f"ext_authz filter `{name}` checks shard {i} only (found {sorted(served.get(name, []))})",
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protoset", required=True, help="encoded FileDescriptorSet with Envoy's API")
    parser.add_argument("config", help="Envoy bootstrap YAML")
    args = parser.parse_args()

    pool = load_pool(args.protoset)
    bootstrap_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("envoy.config.bootstrap.v3.Bootstrap")
    )
    with open(args.config) as f:
        doc = yaml.safe_load(f)
    c = Checks()
    try:
        json_format.ParseDict(doc, bootstrap_type(), descriptor_pool=pool)
        c.check(True, f"{args.config}: valid envoy.config.bootstrap.v3.Bootstrap")
    except json_format.ParseError as e:
        c.check(False, f"{args.config}: not a valid Bootstrap: {e}")
        return 1

    clusters = {cl["name"]: cl for cl in doc["static_resources"].get("clusters", [])}
    hcms = [
        flt["typed_config"]
        for listener in doc["static_resources"].get("listeners", [])
        for chain in listener.get("filter_chains", [])
        for flt in chain.get("filters", [])
        if flt.get("typed_config", {}).get("@type") == HCM
    ]
    c.check(bool(hcms), "an HTTP connection manager")
    for hcm in hcms:
        filters = [flt.get("typed_config", {}) for flt in hcm.get("http_filters", [])]
        types = [flt.get("@type") for flt in filters]
        c.check(EXT_AUTHZ in types, "the ext_authz HTTP filter is configured")
        c.check(
            bool(types) and types[-1] == ROUTER and EXT_AUTHZ in types[:-1],
            "ext_authz runs before the router, which is last",
        )
        for authz in (flt for flt in filters if flt.get("@type") == EXT_AUTHZ):
            grpc = authz.get("grpc_service", {})
            name = grpc.get("envoy_grpc", {}).get("cluster_name")
            c.check(name is not None, "ext_authz calls a gRPC service through envoy_grpc")
            c.check(authz.get("transport_api_version") == "V3", "ext_authz uses transport API V3")
            c.check(authz.get("failure_mode_allow") is False, "ext_authz fails closed (failure_mode_allow: false)")
            c.check("with_request_body" not in authz, "ext_authz does not buffer request bodies")
            cluster = clusters.get(name)
            c.check(cluster is not None, f"ext_authz cluster `{name}` exists")
            if cluster is None:
                continue
            http = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS, {})
            c.check(
                "http2_protocol_options" in http.get("explicit_http_config", {}),
                f"cluster `{name}` speaks HTTP/2 (gRPC)",
            )
            ports = [
                ep["endpoint"]["address"]["socket_address"]["port_value"]
                for group in cluster["load_assignment"]["endpoints"]
                for ep in group["lb_endpoints"]
            ]
            c.check(ports == [50051] * len(ports) and bool(ports), f"cluster `{name}` targets authzd's port 50051")
            services = [
                hc.get("grpc_health_check", {}).get("service_name")
                for hc in cluster.get("health_checks", [])
            ]
            c.check(
                "envoy.service.auth.v3.Authorization" in services,
                f"cluster `{name}` health-checks envoy.service.auth.v3.Authorization",
            )
        for vhost in hcm.get("route_config", {}).get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                if "direct_response" in route:
                    continue
                target = route.get("route", {}).get("cluster")
                c.check(target in clusters, f"route to cluster `{target}` exists")
        check_shards(c, hcm)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
