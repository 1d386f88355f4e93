#!/usr/bin/env python3
"""Checks that kvgate's layers depend one way only (docs/design.md, "Layers").

Two views of the same rule:

* includes: every `#include "..."` of a source or header under a layer's
  folder must name a file of a layer that this layer may use (LAYERS below),
  and the generated protos and gRPC only where they are allowed;
* links (with --graphviz FILE, the output of `cmake --graphviz`): every
  kvgate_* library links only kvgate_* libraries of layers it may use, and
  the graph of kvgate_* targets has no cycle.

Exits 0 when the tree keeps the rule, 1 with one line per violation
otherwise, 2 for a usage error.

Usage: check_layering.py --root SRC [--graphviz FILE.dot]
"""

import argparse
import os
import re
import sys

# Folder prefix -> layer, most specific first.
FOLDERS = [
    ("estimator/planning/", "planning"),
    ("estimator/", "estimator"),
    ("plugin/base/", "base"),
    ("plugin/admission/", "admission"),
    ("plugin/memory/", "memory"),
    ("plugin/journal/", "journal"),
    ("plugin/security/", "security"),
    ("metrics/", "metrics"),
    ("plugin/ext_proc/", "ext_proc"),
    ("plugin/server/", "server"),
    ("tools/", "cli"),
]

# Layer -> the layers it may include (itself always). "proto" is kvgate's
# generated API (kvgate/v1/...), "envoy" Envoy's (envoy/...), "grpc" grpcpp.
LAYERS = {
    "estimator": set(),
    "planning": {"estimator"},
    "base": set(),
    "admission": {"estimator", "base"},
    "memory": {"estimator", "base", "admission"},
    "journal": {"base", "admission"},
    "security": {"base", "grpc"},
    "metrics": {"base", "admission", "memory"},
    "ext_proc": {"estimator", "base", "admission", "memory", "metrics",
                 "proto", "envoy", "grpc"},
    "server": {"estimator", "base", "admission", "memory", "journal",
               "security", "metrics", "ext_proc", "proto", "grpc"},
    "cli": {"estimator", "planning", "proto", "grpc"},
}

# Library target -> layer, for the link check.
TARGETS = {
    "kvgate_estimator": "estimator",
    "kvgate_planning": "planning",
    "kvgate_base": "base",
    "kvgate_admission": "admission",
    "kvgate_memory": "memory",
    "kvgate_journal": "journal",
    "kvgate_security": "security",
    "kvgate_metrics": "metrics",
    "kvgate_openai_request": "ext_proc",
    "kvgate_ext_proc": "ext_proc",
    "kvgate_server": "server",
    "kvgate_cli": "cli",
    "kvgate_proto": "proto",
    "kvgate_envoy_proto": "envoy",
}

# Executables that must not link a library, even indirectly.
SIDECAR_EXCLUDES = {"kvgated": "kvgate_planning"}

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]')


def layer_of_path(path):
    for prefix, layer in FOLDERS:
        if path.startswith(prefix):
            return layer
    return None


def layer_of_include(name):
    """The layer an included file belongs to; None for libraries we ignore."""
    if name.startswith("kvgate/v1/"):
        return "proto"
    if name.startswith("envoy/"):
        return "envoy"
    if name.startswith("grpcpp/") or name.startswith("grpc/"):
        return "grpc"
    return layer_of_path(name)


def check_includes(root):
    errors = []
    checked = 0
    for prefix, _ in FOLDERS:
        top = os.path.join(root, prefix)
        if not os.path.isdir(top):
            continue
        for dirpath, _, files in os.walk(top):
            for f in sorted(files):
                if not f.endswith((".h", ".cc")):
                    continue
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                layer = layer_of_path(rel)
                if layer is None or not rel.startswith(prefix):
                    continue
                checked += 1
                allowed = LAYERS[layer] | {layer}
                with open(full, encoding="utf-8", errors="replace") as src:
                    for number, line in enumerate(src, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = layer_of_include(m.group(1))
                        if target is not None and target not in allowed:
                            errors.append(
                                f"{rel}:{number}: layer '{layer}' includes "
                                f"\"{m.group(1)}\" of layer '{target}' "
                                f"(allowed: {', '.join(sorted(allowed))})")
    if checked == 0:
        errors.append(f"no sources found under {root}: wrong --root?")
    return errors


def parse_graphviz(path):
    """Returns {target: set(linked targets)} from `cmake --graphviz` output."""
    names = {}
    edges = []
    node = re.compile(r'^\s*"(node\d+)"\s*\[\s*label\s*=\s*"([^"]+)"')
    edge = re.compile(r'^\s*"(node\d+)"\s*->\s*"(node\d+)"')
    with open(path, encoding="utf-8") as dot:
        for line in dot:
            m = node.match(line)
            if m:
                names[m.group(1)] = m.group(2)
                continue
            m = edge.match(line)
            if m:
                edges.append((m.group(1), m.group(2)))
    graph = {}
    for a, b in edges:
        if a in names and b in names:
            graph.setdefault(names[a], set()).add(names[b])
    return graph


def find_cycle(graph):
    """A list of targets forming a cycle, or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def check_links(path):
    graph = parse_graphviz(path)
    errors = []
    if not any(t in graph for t in TARGETS):
        return [f"{path}: no kvgate_* targets found: not a cmake --graphviz file?"]
    for target, deps in sorted(graph.items()):
        layer = TARGETS.get(target)
        if layer is None:
            continue
        allowed = LAYERS.get(layer, set()) | {layer}
        for dep in sorted(deps):
            dep_layer = TARGETS.get(dep)
            if dep_layer is not None and dep_layer not in allowed:
                errors.append(f"{target} (layer '{layer}') links {dep} "
                              f"(layer '{dep_layer}')")
    # The project's libraries and binaries (test executables are left out:
    # CMake draws some of them with an edge to themselves).
    ours = set(TARGETS) | set(SIDECAR_EXCLUDES) | {"kvgate"}
    kvgate_only = {t: {d for d in deps if d in ours}
                   for t, deps in graph.items() if t in ours}
    cycle = find_cycle(kvgate_only)
    if cycle:
        errors.append("link cycle: " + " -> ".join(cycle))
    # The CLI-only estimator parts stay out of the sidecar.
    for binary, banned in SIDECAR_EXCLUDES.items():
        if binary in graph and banned in reachable(graph, binary):
            errors.append(f"{binary} links {banned}, which only the CLI needs")
    return errors


def reachable(graph, start):
    seen = set()
    todo = [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="source tree root")
    parser.add_argument("--graphviz", help="cmake --graphviz output (.dot)")
    args = parser.parse_args()
    errors = check_includes(args.root)
    if args.graphviz:
        errors += check_links(args.graphviz)
    for e in errors:
        print(e)
    if errors:
        print(f"layering: {len(errors)} violation(s)", file=sys.stderr)
        return 1
    print("layering: every include and link points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
