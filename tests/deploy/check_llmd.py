#!/usr/bin/env python3
"""Checks deploy/llm-d against the real thing.

Usage: check_llmd.py REPO_ROOT CHECK [--kvgated=PATH] [--config=PATH]

  selectors  starts two kvgated processes (static memory source, two models:
             the ones the shipped picker config names), scrapes their
             /metrics, and checks that every metric selector the picker reads
             from kvgated (the core-metrics-extractor attached to the
             metrics-data-source on kvgated's port) is one `name{label="v"}`
             selector that matches exactly one series, with a value of the
             documented shape (kvUsageSpec 0..1, the others >= 0). Then plants
             a typo in a temporary copy of the config and checks that the same
             check FAILS on it (a check that cannot fail proves nothing).
             Also: injectDefaults is false, maxNumOfEndpoints > 1, the engine
             extractor has no kvUsageSpec for the kvgate engine configs, and
             the pod label in kustomization.yaml names a kvgate engine config.
  render     `kubectl kustomize deploy/llm-d` succeeds and renders the picker
             config and the labelled pods (exit 77, skipped, without kubectl).
  lint       yamllint --strict with deploy/llm-d/.yamllint.yaml.
  envoy      deploy/llm-d/envoy.yaml parses; the pool cluster uses the
             override_host policy fed by x-gateway-destination-endpoint; the
             route retries 429 (retriable-status-codes) on another host
             (previous_hosts); the body is buffered for replay.
Needs Debian's python3-yaml.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

KVGATE_METRICS_PORT = 9464
# The models of the test's kvgated: the two the shipped config names.
MODELS = ("meta-llama/Meta-Llama-3-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
SKIP = 77

# As llm-d-router v0.10.0 pkg/epp/framework/plugins/datalayer/extractor/
# metrics/spec.go parses a spec.
ADD_QUOTES_RE = re.compile(r'(\w+)\s*=\s*([^",}\s]+)')
SPEC_RE = re.compile(r'^\s*(\S+?)\s*(?:\{([^}]*)\})?\s*$')
LABEL_PAIR_RE = re.compile(r'^\s*(\S+?)\s*=\s*"([^"]*)"\s*$')
METRIC_NAME_RE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*$')
LABEL_NAME_RE = re.compile(r'^[a-zA-Z_][a-zA-Z0-9_]*$')


class Failure(Exception):
    pass


def parse_spec(spec):
    """(name, {label: value}) or raises Failure, as the picker would reject it."""
    m = SPEC_RE.match(ADD_QUOTES_RE.sub(r'\1="\2"', spec))
    if not m or not METRIC_NAME_RE.match(m.group(1)):
        raise Failure(f"not a valid metric specification: {spec!r} "
                      "(one name{label=\"v\"} selector, no arithmetic)")
    labels = {}
    block = (m.group(2) or "").strip()
    if block:
        for pair in block.split(","):
            lm = LABEL_PAIR_RE.match(pair)
            if not lm or not LABEL_NAME_RE.match(lm.group(1)):
                raise Failure(f"invalid label pair {pair!r} in {spec!r}")
            labels[lm.group(1)] = lm.group(2)
    return m.group(1), labels


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """[(name, {labels}, value)] of a Prometheus text page."""
    series = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if m:
            series.append((m.group(1), dict(LABEL_RE.findall(m.group(2) or "")),
                           float(m.group(3))))
    return series


def plugins_by_name(config):
    return {p.get("name", p["type"]): p for p in config["plugins"]}


def kvgate_extractors(config):
    """The core-metrics-extractor plugins fed by a metrics-data-source on
    kvgated's port."""
    plugins = plugins_by_name(config)
    found = []
    for source in config.get("dataLayer", {}).get("sources", []):
        p = plugins[source["pluginRef"]]
        if (p["type"] == "metrics-data-source" and
                p.get("parameters", {}).get("port") == KVGATE_METRICS_PORT):
            found += [plugins[e["pluginRef"]] for e in source["extractors"]]
    return found


def selectors(config):
    """[(where, spec, shape)] for every spec the kvgate extractors read."""
    out = []
    for ext in kvgate_extractors(config):
        for ec in ext["parameters"]["engineConfigs"]:
            where = f"{ext.get('name')}/{ec['name']}"
            for key, value in ec.items():
                if key.endswith("Spec") and value:
                    out.append((f"{where}.{key}", value,
                                "ratio" if key == "kvUsageSpec" else "count"))
            for cm in ec.get("customMetrics", []):
                out.append((f"{where}.customMetrics[{cm['attributeKey']}]",
                            cm["metricSpec"], "count"))
    return out


def selector_errors(config, pages):
    """Errors of the selectors of config against each scraped page."""
    errors = []
    specs = selectors(config)
    if not specs:
        return ["no selector read from kvgated's port "
                f"({KVGATE_METRICS_PORT}) in the config"]
    for where, spec, shape in specs:
        try:
            name, labels = parse_spec(spec)
        except Failure as e:
            errors.append(f"{where}: {e}")
            continue
        for page_name, series in pages.items():
            hits = [(lbl, v) for n, lbl, v in series if n == name and
                    all(lbl.get(k) == val for k, val in labels.items())]
            if len(hits) != 1:
                errors.append(f"{where}: {spec} matches {len(hits)} series of "
                              f"{page_name} (needs exactly 1)")
                continue
            value = hits[0][1]
            if shape == "ratio" and not 0.0 <= value <= 1.0:
                errors.append(f"{where}: {spec} = {value}, not in 0..1")
            if shape == "count" and not value >= 0.0:
                errors.append(f"{where}: {spec} = {value}, negative")
    return errors


def structure_errors(root, config):
    errors = []
    if config.get("dataLayer", {}).get("injectDefaults") is not False:
        errors.append("dataLayer.injectDefaults must be false (else the picker "
                      "adds a third scrape with the vllm mapping)")
    plugins = plugins_by_name(config)
    pickers = [p for p in plugins.values() if p["type"].endswith("-picker")]
    if not pickers or any(p.get("parameters", {}).get("maxNumOfEndpoints", 1) <= 1
                          for p in pickers):
        errors.append("the picker needs maxNumOfEndpoints > 1")
    kvgate_names = set()
    for ext in kvgate_extractors(config):
        kvgate_names |= {ec["name"] for ec in ext["parameters"]["engineConfigs"]}
    for p in plugins.values():
        if p["type"] != "core-metrics-extractor" or p in kvgate_extractors(config):
            continue
        names = {ec["name"]: ec for ec in p["parameters"].get("engineConfigs", [])}
        for n in sorted(kvgate_names):
            if n not in names:
                errors.append(f"{p.get('name')}: no engine config {n}: it falls "
                              "back to vllm's and overwrites the KV usage")
            elif names[n].get("kvUsageSpec"):
                errors.append(f"{p.get('name')}/{n}: kvUsageSpec would "
                              "overwrite kvgate's")
    kust = yaml.safe_load((root / "deploy/llm-d/kustomization.yaml").read_text())
    label = [l["pairs"].get("llm-d.ai/engine-type") for l in kust.get("labels", [])]
    if not any(v in kvgate_names for v in label):
        errors.append(f"kustomization.yaml labels pods {label}, not one of "
                      f"the kvgate engine configs {sorted(kvgate_names)}")
    return errors


def start_kvgated(kvgated, tmp, index):
    config = tmp / f"kvgated{index}.txtpb"
    config.write_text("".join(f'models {{ name: "{m}" preset: "llama-3-8b" }}\n'
                              for m in MODELS) +
                      'memory_source { static_source { gpu: "H100-80GB" } }\n')
    log_path = tmp / f"kvgated{index}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [kvgated, f"--config={config}",
         f"--grpc_address=unix:{tmp / f'kvgate{index}.sock'}",
         "--metrics_address=127.0.0.1:0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log, log_path


def metrics_address(proc, log_path, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"kvgated exited {proc.returncode}: "
                          f"{log_path.read_text()[-2000:]}")
        for line in log_path.read_text().splitlines():
            if '"metrics listening"' in line:
                return json.loads(line)["address"]
        time.sleep(0.1)
    raise Failure("kvgated did not report its metrics address")


def scrape_kvgated(kvgated, tmp):
    procs = []
    try:
        for i in range(2):
            procs.append(start_kvgated(kvgated, tmp, i))
        deadline = time.monotonic() + 20
        pages = {}
        for i, (proc, _, log_path) in enumerate(procs):
            address = metrics_address(proc, log_path, deadline)
            with urllib.request.urlopen(f"http://{address}/metrics",
                                        timeout=5) as r:
                pages[f"kvgated#{i} ({address})"] = parse_exposition(
                    r.read().decode())
        return pages
    finally:
        for proc, log, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def check_selectors(root, args):
    config_path = pathlib.Path(args.config or root / "deploy/llm-d/epp-config.yaml")
    config = yaml.safe_load(config_path.read_text())
    with tempfile.TemporaryDirectory(prefix="check_llmd.") as tmp:
        tmp = pathlib.Path(tmp)
        pages = scrape_kvgated(args.kvgated, tmp)
        errors = structure_errors(root, config) + selector_errors(config, pages)
        for where, spec, shape in selectors(config):
            print(f"selector {where}: {spec} ({shape})")
        if errors:
            raise Failure("\n".join(errors))
        print(f"{len(selectors(config))} selectors, each matches exactly one "
              f"series of each of {len(pages)} kvgated")

        # The planted typo: the same check on a temporary copy must fail.
        text = config_path.read_text()
        planted = text.replace("kvgate_budget_used_ratio{",
                               "kvgate_budget_usedratio{", 1)
        if planted == text:
            raise Failure("could not plant the typo (no kvgate_budget_used_ratio)")
        copy = tmp / "epp-config-typo.yaml"
        copy.write_text(planted)
        typo_errors = selector_errors(yaml.safe_load(copy.read_text()), pages)
        if not any("kvgate_budget_usedratio" in e for e in typo_errors):
            raise Failure("the selector check passed a config with a planted "
                          "typo (kvgate_budget_usedratio): it cannot fail")
        print("planted typo in a temporary copy fails as it should:")
        print("\n".join(f"  {e}" for e in typo_errors))
    return 0


def check_render(root, _):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("kubectl not found: skipped")
        return SKIP
    proc = subprocess.run([kubectl, "kustomize", str(root / "deploy/llm-d")],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise Failure(f"kubectl kustomize exited {proc.returncode}: {proc.stderr}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for name, key in (("kvgate-epp-config", "epp-config.yaml"),
                      ("kvgate-gateway-envoy", "envoy.yaml")):
        if key not in cms.get(name, {}).get("data", {}):
            raise Failure(f"no ConfigMap {name} with {key}")
    epp = yaml.safe_load(cms["kvgate-epp-config"]["data"]["epp-config.yaml"])
    if epp.get("kind") != "EndpointPickerConfig":
        raise Failure("kvgate-epp-config does not hold an EndpointPickerConfig")
    labelled = [d for d in docs if d["kind"] == "Deployment" and
                d["spec"]["template"]["metadata"].get("labels", {})
                .get("llm-d.ai/engine-type")]
    if not labelled:
        raise Failure("no Deployment whose pods carry llm-d.ai/engine-type")
    print(f"rendered {len(docs)} objects; {len(labelled)} labelled Deployment(s)")
    return 0


def check_lint(root, _):
    yamllint = shutil.which("yamllint")
    if not yamllint:
        raise Failure("yamllint not found (Debian's yamllint)")
    d = root / "deploy/llm-d"
    files = sorted(str(p) for p in d.glob("*.yaml")) + [str(d / ".yamllint.yaml")]
    proc = subprocess.run([yamllint, "--strict", "-c", str(d / ".yamllint.yaml")]
                          + files, capture_output=True, text=True, timeout=60)
    print(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise Failure(f"yamllint exited {proc.returncode}")
    print(f"yamllint: {len(files)} files clean")
    return 0


def envoy_errors(config):
    errors = []
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"][0]["typed_config"]
    routes = [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]
    filters = [f["name"] for f in hcm["http_filters"]]
    if "envoy.filters.http.ext_proc" not in filters:
        errors.append("no ext_proc filter (the picker)")
    if filters[-1:] != ["envoy.filters.http.router"]:
        errors.append("the router must be the last filter")
    for r in routes:
        route = r.get("route", {})
        cluster = clusters.get(route.get("cluster"))
        where = f"route {r.get('match')}"
        if not cluster:
            errors.append(f"{where}: unknown cluster {route.get('cluster')}")
            continue
        policies = cluster.get("load_balancing_policy", {}).get("policies", [])
        ext = policies[0]["typed_extension_config"] if policies else {}
        if ext.get("name") != "envoy.load_balancing_policies.override_host":
            errors.append(f"cluster {cluster['name']}: no override_host policy")
        sources = ext.get("typed_config", {}).get("override_host_sources", [])
        if not any(s.get("header") == "x-gateway-destination-endpoint"
                   for s in sources):
            errors.append(f"cluster {cluster['name']}: override_host is not fed "
                          "by x-gateway-destination-endpoint")
        if not ext.get("typed_config", {}).get("fallback_policy"):
            errors.append(f"cluster {cluster['name']}: override_host needs a "
                          "fallback_policy")
        retry = route.get("retry_policy", {})
        if "retriable-status-codes" not in retry.get("retry_on", "").split(","):
            errors.append(f"{where}: retry_on lacks retriable-status-codes")
        if 429 not in retry.get("retriable_status_codes", []):
            errors.append(f"{where}: 429 is not a retriable status code")
        if retry.get("num_retries", 1) < 1:
            errors.append(f"{where}: num_retries < 1")
        if not any(p.get("name") == "envoy.retry_host_predicates.previous_hosts"
                   for p in retry.get("retry_host_predicate", [])):
            errors.append(f"{where}: no previous_hosts retry host predicate")
        buffers = [f.get("typed_config", {}).get("max_request_bytes", 0)
                   for f in hcm["http_filters"]
                   if f["name"] == "envoy.filters.http.buffer"]
        limit = max([route.get("per_request_buffer_limit_bytes", 0)] + buffers)
        if limit < 1 << 20:
            errors.append(f"{where}: no request buffer of at least 1 MiB to "
                          "replay a prompt on retry")
    if not routes:
        errors.append("no route")
    return errors


def check_envoy(root, _):
    config = yaml.safe_load((root / "deploy/llm-d/envoy.yaml").read_text())
    errors = envoy_errors(config)
    if errors:
        raise Failure("\n".join(errors))
    print("envoy.yaml: override_host, retry on 429 with previous_hosts, buffer")
    return 0


CHECKS = {"selectors": check_selectors, "render": check_render,
          "lint": check_lint, "envoy": check_envoy}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--kvgated")
    parser.add_argument("--config", help="picker config (default: the shipped one)")
    args = parser.parse_args()
    if args.check == "selectors" and not args.kvgated:
        parser.error("selectors needs --kvgated")
    try:
        return CHECKS[args.check](pathlib.Path(args.root), args)
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
