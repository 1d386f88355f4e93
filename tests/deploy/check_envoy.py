#!/usr/bin/env python3
"""Checks deploy/envoy/envoy.yaml, the example Envoy configuration.

Usage: check_envoy.py REPO_ROOT

No Envoy binary is available in CI, so this checks what kvgate depends on:
the file is well-formed YAML; the ext_proc filter comes before the router
and points at the kvgate cluster (HTTP/2, as gRPC needs); request headers
and the BUFFERED body are sent, the response body STREAMED; failure_mode_allow
is set explicitly; max_message_timeout leaves room for kvgated's
override_message_timeout (ext_proc.max_hold, default 30 s, plus 1 s); and a
header_mutation filter before ext_proc removes every client-sent x-kvgate-*
request header kvgated reads or sets.
Needs PyYAML (Debian's python3-yaml, in scripts/install-deps.sh).
"""
import pathlib
import sys

import yaml

# kvgated's default hold (queue.max_queue_wait) plus its 1 s margin.
MIN_MAX_MESSAGE_TIMEOUT_S = 31.0

# Request headers kvgated reads (ExtProcConfig's defaults) or sets
# (plugin/ext_proc/ext_proc_responses.h): a client must not send them.
KVGATE_REQUEST_HEADERS = ("x-kvgate-tenant", "x-kvgate-priority",
                          "x-kvgate-prompt-tokens", "x-kvgate-decision",
                          "x-kvgate-reason", "x-kvgate-reserved-bytes")
HEADER_MUTATION = "envoy.filters.http.header_mutation"


def check_header_removal(http_filters):
    """Errors unless a header_mutation filter placed before ext_proc removes
    every header in KVGATE_REQUEST_HEADERS."""
    names = [f["name"] for f in http_filters]
    ext_proc = names.index("envoy.filters.http.ext_proc")
    removed = set()
    for f in http_filters[:ext_proc]:
        if f["name"] != HEADER_MUTATION:
            continue
        mutations = f.get("typed_config", {}).get("mutations", {})
        for m in mutations.get("request_mutations", []):
            if isinstance(m.get("remove"), str):
                removed.add(m["remove"].lower())
    missing = [h for h in KVGATE_REQUEST_HEADERS if h not in removed]
    if missing:
        return [f"client-sent {', '.join(missing)} must be removed by an "
                f"{HEADER_MUTATION} filter before ext_proc"]
    return []


def seconds(text):
    if not isinstance(text, str) or not text.endswith("s"):
        raise ValueError(f"not a duration: {text!r}")
    return float(text[:-1])


def check(config):
    errors = []
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in hcm["http_filters"]]
    if filters[-1] != "envoy.filters.http.router":
        errors.append("the router must be the last HTTP filter")
    if "envoy.filters.http.ext_proc" not in filters:
        return errors + ["no envoy.filters.http.ext_proc filter"]
    errors += check_header_removal(hcm["http_filters"])
    ext = next(f for f in hcm["http_filters"]
               if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
    mode = ext["processing_mode"]
    expected = {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "STREAMED"}
    for key, value in expected.items():
        if mode.get(key) != value:
            errors.append(f"processing_mode.{key}: {mode.get(key)!r}, "
                          f"expected {value}")
    if "failure_mode_allow" not in ext:
        errors.append("failure_mode_allow must be set explicitly")
    if seconds(ext.get("max_message_timeout", "0s")) < MIN_MAX_MESSAGE_TIMEOUT_S:
        errors.append("max_message_timeout must be >= "
                      f"{MIN_MAX_MESSAGE_TIMEOUT_S}s")
    if seconds(ext.get("message_timeout", "0.2s")) <= 0:
        errors.append("message_timeout must be positive")
    cluster_name = ext["grpc_service"]["envoy_grpc"]["cluster_name"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    if cluster_name not in clusters:
        errors.append(f"no cluster {cluster_name!r}")
    else:
        options = clusters[cluster_name].get("typed_extension_protocol_options", {})
        http = options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
        if "http2_protocol_options" not in http.get("explicit_http_config", {}):
            errors.append(f"cluster {cluster_name!r} must speak HTTP/2 (gRPC)")
    buffer_limit = listener.get("per_connection_buffer_limit_bytes", 1 << 20)
    if buffer_limit < 8 << 20:
        errors.append("per_connection_buffer_limit_bytes below kvgated's "
                      "default ext_proc.max_body_bytes (8 MiB)")
    return errors


def main():
    root = pathlib.Path(sys.argv[1])
    config = yaml.safe_load((root / "deploy/envoy/envoy.yaml").read_text())
    errors = check(config)
    for error in errors:
        print(f"deploy/envoy/envoy.yaml: {error}", file=sys.stderr)
    if not errors:
        print("deploy/envoy/envoy.yaml: ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
