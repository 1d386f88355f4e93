#!/usr/bin/env python3
"""Checks kvgate's monitoring files (deploy/grafana, deploy/prometheus).

Usage: check_deploy.py REPO_ROOT CHECK, where CHECK is one of
  rules        promtool check rules on the plain rules file
  rule-tests   promtool test rules on deploy/prometheus/tests/*.yaml, and
               every alert has a case where it fires and one where it does not
  dashboard    the Grafana dashboard's structure (schema, uid, variables,
               $__rate_interval, heatmap, coverage of every kvgate_ metric)
  sync         the ConfigMap and PrometheusRule match their sources

Exits non-zero with a message on any failure. A missing promtool is a
failure, not a skip: install Debian's `prometheus` (scripts/install-deps.sh).
Python standard library only.
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys


class CheckError(Exception):
    pass


def promtool():
    path = shutil.which("promtool")
    if path is None:
        raise CheckError("promtool not found: install Debian's `prometheus` "
                         "package (scripts/install-deps.sh)")
    return path


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    print(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise CheckError(f"{' '.join(cmd)} exited {proc.returncode}")


def alert_names(root):
    text = (root / "deploy/prometheus/kvgate-rules.yaml").read_text()
    return re.findall(r"^\s*- alert:\s*(\w+)", text, re.M)


def check_rules(root):
    run([promtool(), "check", "rules", "deploy/prometheus/kvgate-rules.yaml"],
        root)


def check_rule_tests(root):
    files = sorted((root / "deploy/prometheus/tests").glob("*.yaml"))
    if not files:
        raise CheckError("no rule unit tests in deploy/prometheus/tests")
    run([promtool(), "test", "rules"] + [str(f) for f in files], root)
    # Coverage: for each alert, an evaluation that expects it and one that
    # expects nothing.
    fires, quiet = set(), set()
    for f in files:
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s*alertname:\s*(\w+)\s*$", line)
            if not m or i + 1 >= len(lines):
                continue
            following = lines[i + 1].strip()
            if following == "exp_alerts: []":
                quiet.add(m.group(1))
            elif following == "exp_alerts:":
                fires.add(m.group(1))
    missing = [f"{a} (no case where it {'fires' if a not in fires else 'stays quiet'})"
               for a in alert_names(root) if a not in fires or a not in quiet]
    if missing:
        raise CheckError("alerts without a firing and a quiet test case: " +
                         ", ".join(missing))
    print(f"{len(alert_names(root))} alerts, each tested firing and quiet")


def exported_families(root):
    """Metric family names registered in metrics/metrics.cc."""
    text = (root / "metrics/metrics.cc").read_text()
    return set(re.findall(r'"(kvgate_[a-z_]+)"', text))


def dashboard_exprs(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target["expr"]


def check_dashboard(root):
    d = json.loads((root / "deploy/grafana/kvgate.json").read_text())
    errors = []

    def expect(cond, message):
        if not cond:
            errors.append(message)

    expect(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 39,
           f"schemaVersion {d.get('schemaVersion')} < 39")
    expect(isinstance(d.get("uid"), str) and
           re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]) is not None,
           f"uid {d.get('uid')!r} is not a stable Grafana uid")
    expect("id" in d and d["id"] is None, "id must be null")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    expect(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
           "no `datasource` variable of type datasource/prometheus")
    model = variables.get("model", {})
    expect(model.get("type") == "query" and "model" in model.get("definition", ""),
           "no `model` query variable")
    ids = [p["id"] for p in d["panels"]]
    expect(len(ids) == len(set(ids)), "panel ids are not unique")

    used = set()
    for panel, expr in dashboard_exprs(d):
        title = panel["title"]
        expect(panel.get("datasource", {}).get("uid") == "${datasource}",
               f"panel {title!r} does not use ${{datasource}}")
        for m in re.finditer(r"\b(i?rate|increase)\(([^()]*)\)", expr):
            expect(m.group(2).rstrip().endswith("[$__rate_interval]"),
                   f"panel {title!r}: {m.group(0)} does not use $__rate_interval")
        for name in re.findall(r"\b(kvgate_[a-z_]+)", expr):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
        gp = panel.get("gridPos", {})
        expect(gp.get("x", 0) + gp.get("w", 0) <= 24,
               f"panel {title!r} overflows the 24-column grid")
    heatmaps = [p for p in d["panels"] if p["type"] == "heatmap"]
    expect(any("kvgate_queue_wait_seconds_bucket" in t["expr"]
               for p in heatmaps for t in p["targets"]),
           "no heatmap panel of kvgate_queue_wait_seconds_bucket")
    families = exported_families(root)
    expect(families, "found no metric names in metrics/metrics.cc")
    expect(not (used - families),
           f"dashboard uses metrics kvgated does not export: {sorted(used - families)}")
    expect(not (families - used),
           f"metrics without a panel: {sorted(families - used)}")
    if errors:
        raise CheckError("dashboard: " + "; ".join(errors))
    print(f"dashboard ok: {len(d['panels'])} panels, {len(used)} metric families")


def check_sync(root):
    proc = subprocess.run([sys.executable, str(root / "deploy/sync.py"),
                           "--check"], capture_output=True, text=True)
    print(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise CheckError("generated deploy files are stale")


CHECKS = {
    "rules": check_rules,
    "rule-tests": check_rule_tests,
    "dashboard": check_dashboard,
    "sync": check_sync,
}


def main(argv):
    if len(argv) != 3 or argv[2] not in CHECKS:
        print(__doc__)
        return 2
    try:
        CHECKS[argv[2]](pathlib.Path(argv[1]).resolve())
    except CheckError as e:
        print(f"FAIL: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
