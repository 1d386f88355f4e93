#!/usr/bin/env python3
"""Checks kvgate's Kubernetes manifests and image (deploy/kubernetes, deploy/docker).

Usage: check_kubernetes.py REPO_ROOT CHECK [--kvgated=PATH]
  render      `kubectl kustomize` of every overlay, then the rendered YAML:
              the sidecar is a native sidecar (init container, restartPolicy
              Always) with gRPC startup/readiness/liveness probes on its
              --health_address port, watches GPUs without requesting one,
              runs restricted, has requests and limits, shares the socket's
              emptyDir with the model server, mounts the ConfigMap at its
              --config path, keeps its lease journal (--state_dir) in a
              writable volume it mounts, exposes the metrics port the PodMonitor scrapes
              on a pod its selector matches; the Service, PodMonitor,
              PrometheusRule and dashboard are there; a NetworkPolicy selects
              the pod, lets only selected pods (Prometheus) reach the
              metrics port, does not open the health port to everyone,
              keeps the model server's ports open and leaves egress alone;
              the rendered config
              passes `kvgated --validate`.
              Exits 77 (ctest: skipped) where kubectl is absent.
  recipes     every kustomize example of the docs (`kubectl kustomize DIR`
              and `kubectl apply -k DIR` in deploy/README.md and the
              comments under deploy/kubernetes; the README's kustomization
              blocks, laid out in a temporary directory; the README's
              patches for an overlay, applied to a copy of overlays/vllm),
              rendered and checked as in `render`; then the sidecar component's two
              names set wrong in temporary copies: both left as shipped and
              only the container name set must make kustomize fail, only
              the Deployment name set must fail the checks (a container
              with no image). Exits 77 where kubectl is absent.
  runbook     every alert of deploy/prometheus/kvgate-rules.yaml and
              prometheusrule.yaml has a runbook_url naming a file of the
              repository and one of its headings (GitHub's anchors); the
              containers (`-c NAME`, "container `NAME`") and ports
              ("port `NAME`") docs/runbook.md names exist in the rendered
              overlays. Exits 77 after the first part where kubectl is
              absent.
  config      `kvgated --validate` on deploy/kubernetes/base/kvgate.txtpb
              (runs without kubectl).
  lint        yamllint --strict on the manifests (fails without yamllint:
              install it with scripts/install-deps.sh).
  dockerfile  deploy/docker/Dockerfile read statically (no Docker engine is
              needed): multi-stage on bookworm, the project's install script
              for both stages, numeric non-root USER, kvgated entrypoint, a
              .dockerignore; and every shared library the built kvgated
              loads belongs to a package that `install-deps.sh --runtime`
              installs, or to one of their dependencies.

Exits non-zero with a message on any failure. Needs python3-yaml.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    sys.exit("FAIL: PyYAML not found: install Debian's python3-yaml "
             "(scripts/install-deps.sh) and run with /usr/bin/python3")

SKIP = 77
SIDECAR = "kvgated"


class CheckError(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckError(message)


# ---------------------------------------------------------------------------
# Rendering.


def overlays(root):
    found = sorted(p.parent for p in
                   (root / "deploy/kubernetes/overlays").glob("*/kustomization.yaml"))
    expect(found, "no overlays in deploy/kubernetes/overlays")
    return found


def render(kubectl, directory):
    proc = subprocess.run([kubectl, "kustomize", str(directory)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise CheckError(f"kubectl kustomize {directory} exited "
                         f"{proc.returncode}:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def flag(args, name):
    """The value of --name=VALUE in args, or None."""
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def config_text_field(text, field):
    m = re.search(rf'^\s*{field}:\s*"([^"]*)"', text, re.M)
    return m.group(1) if m else None


def check_probes(sidecar, where):
    health = flag(sidecar.get("args", []), "health_address")
    expect(health, f"{where}: kvgated has no --health_address for the probes")
    port = int(health.rsplit(":", 1)[1])
    expect(not health.startswith("127.") and not health.startswith("localhost"),
           f"{where}: --health_address {health} is loopback; kubelet probes "
           "dial the pod IP")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = sidecar.get(kind)
        expect(probe, f"{where}: kvgated has no {kind}")
        grpc = probe.get("grpc")
        expect(grpc, f"{where}: kvgated's {kind} is not a gRPC probe")
        expect(grpc.get("port") == port,
               f"{where}: {kind} dials port {grpc.get('port')}, "
               f"--health_address listens on {port}")
    expect(sidecar["readinessProbe"]["grpc"].get("service") ==
           "kvgate.v1.Admission",
           f"{where}: readiness should ask for kvgate.v1.Admission")


def check_gpu_access(sidecar, main_containers, where):
    env = {e["name"]: e.get("value") for e in sidecar.get("env", [])}
    expect(env.get("NVIDIA_VISIBLE_DEVICES") == "all",
           f"{where}: kvgated needs NVIDIA_VISIBLE_DEVICES=all")
    expect(env.get("NVIDIA_DRIVER_CAPABILITIES") == "utility",
           f"{where}: kvgated needs NVIDIA_DRIVER_CAPABILITIES=utility")
    resources = sidecar.get("resources", {})
    for part in ("requests", "limits"):
        taken = [r for r in resources.get(part, {}) if "gpu" in r.lower()]
        expect(not taken, f"{where}: kvgated {part} {taken}: the sidecar must "
               "not take a GPU from the model server")
        for r in ("cpu", "memory"):
            expect(r in resources.get(part, {}),
                   f"{where}: kvgated has no {r} in resources.{part}")
    expect(any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
               for c in main_containers),
           f"{where}: no model server container requests nvidia.com/gpu")


def check_security(sidecar, where):
    sc = sidecar.get("securityContext", {})
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False}
    for key, value in want.items():
        expect(sc.get(key) is value,
               f"{where}: kvgated securityContext.{key} should be {value}")
    expect(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] != 0,
           f"{where}: kvgated needs a numeric non-root runAsUser")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"],
           f"{where}: kvgated must drop ALL capabilities")
    expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
           f"{where}: kvgated needs seccompProfile RuntimeDefault")


def mounts(container):
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def check_volumes(spec, sidecar, main_containers, configmaps, where):
    """Returns the config text the sidecar reads."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    config_path = flag(sidecar.get("args", []), "config")
    expect(config_path, f"{where}: kvgated has no --config")
    config_dir, config_file = os.path.split(config_path)
    config_mount = [m for m in sidecar.get("volumeMounts", [])
                    if m["mountPath"] == config_dir]
    expect(config_mount, f"{where}: nothing mounted at {config_dir}")
    config_volume = volumes.get(config_mount[0]["name"], {})
    cm_name = config_volume.get("configMap", {}).get("name")
    expect(cm_name in configmaps,
           f"{where}: config volume names ConfigMap {cm_name}, which the "
           f"overlay does not render (have: {sorted(configmaps)})")
    text = configmaps[cm_name].get("data", {}).get(config_file)
    expect(text, f"{where}: ConfigMap {cm_name} has no key {config_file}")

    address = config_text_field(text, "grpc_address")
    expect(address and address.startswith("unix:"),
           f"{where}: the config's grpc_address {address} is not a unix socket")
    socket_dir = os.path.dirname(address[len("unix:"):])
    sidecar_socket = [m for m in sidecar.get("volumeMounts", [])
                      if m["mountPath"] == socket_dir]
    expect(sidecar_socket, f"{where}: kvgated does not mount {socket_dir}")
    name = sidecar_socket[0]["name"]
    expect("emptyDir" in volumes.get(name, {}),
           f"{where}: socket volume {name} is not an emptyDir")
    sharing = [c["name"] for c in main_containers
               if mounts(c).get(name, {}).get("mountPath") == socket_dir]
    expect(sharing, f"{where}: no model server container mounts the socket "
           f"volume {name} at {socket_dir}")
    for c in main_containers:
        if c["name"] in sharing:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            expect(env.get("KVGATE_ADDRESS") == address,
                   f"{where}: container {c['name']} has KVGATE_ADDRESS "
                   f"{env.get('KVGATE_ADDRESS')}, kvgated listens on {address}")
    return text


def check_state(spec, sidecar, config_text, where):
    """The lease journal (--state_dir, or the config's lease_journal
    state_dir) lies in a writable volume of the sidecar's."""
    state_dir = (flag(sidecar.get("args", []), "state_dir") or
                 config_text_field(config_text, "state_dir"))
    expect(state_dir, f"{where}: kvgated has no --state_dir (nor a "
           "lease_journal state_dir in its config): its leases live in "
           "memory only and a restarted sidecar forgets them")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    holding = [m for m in sidecar.get("volumeMounts", [])
               if state_dir == m["mountPath"] or
               state_dir.startswith(m["mountPath"].rstrip("/") + "/")]
    expect(holding, f"{where}: --state_dir {state_dir} is not in any volume "
           "kvgated mounts (the root filesystem is read-only and lost with "
           "the container)")
    mount = max(holding, key=lambda m: len(m["mountPath"]))
    expect(not mount.get("readOnly"),
           f"{where}: the state volume {mount['name']} is mounted read-only")
    volume = volumes.get(mount["name"], {})
    kinds = {"emptyDir", "persistentVolumeClaim", "hostPath", "ephemeral"}
    expect(kinds & set(volume),
           f"{where}: the state volume {mount['name']} is "
           f"{sorted(set(volume) - {'name'})}, not one of {sorted(kinds)}")


def check_monitoring(docs, pod_labels, sidecar, config_text, where):
    podmonitors = by_kind(docs, "PodMonitor")
    expect(len(podmonitors) == 1, f"{where}: {len(podmonitors)} PodMonitors")
    pm = podmonitors[0]["spec"]
    selector = pm["selector"]["matchLabels"]
    expect(all(pod_labels.get(k) == v for k, v in selector.items()),
           f"{where}: pod labels {pod_labels} do not match the PodMonitor "
           f"selector {selector}")
    ports = {p.get("name"): p for p in sidecar.get("ports", [])}
    metrics_port = int(config_text_field(config_text,
                                         "metrics_address").rsplit(":", 1)[1])
    for endpoint in pm["podMetricsEndpoints"]:
        expect(endpoint["port"] in ports,
               f"{where}: PodMonitor scrapes port {endpoint['port']}, which "
               f"kvgated does not name (has {sorted(ports)})")
        expect(ports[endpoint["port"]]["containerPort"] == metrics_port,
               f"{where}: port {endpoint['port']} is "
               f"{ports[endpoint['port']]['containerPort']}, the config's "
               f"metrics_address listens on {metrics_port}")
    services = [s for s in by_kind(docs, "Service")
                if s["metadata"]["name"] == "kvgate-metrics"]
    expect(services, f"{where}: no kvgate-metrics Service")
    svc = services[0]["spec"]
    expect(all(pod_labels.get(k) == v for k, v in svc["selector"].items()),
           f"{where}: kvgate-metrics selects {svc['selector']}, the pod has "
           f"{pod_labels}")
    expect(all(p["targetPort"] in ports for p in svc["ports"]),
           f"{where}: kvgate-metrics targets ports kvgated does not name")
    expect(by_kind(docs, "PrometheusRule"), f"{where}: no PrometheusRule")
    expect(any(c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
               for c in by_kind(docs, "ConfigMap")),
           f"{where}: no dashboard ConfigMap")


def policy_ports(rule, container_ports):
    """The container port numbers an ingress rule opens (all: None)."""
    if not rule.get("ports"):
        return None
    opened = set()
    for p in rule["ports"]:
        port = p.get("port")
        if port is None:
            return None
        if isinstance(port, str):
            expect(port in container_ports, f"NetworkPolicy names port {port}, "
                   f"which no container of the pod has ({sorted(container_ports)})")
            port = container_ports[port]
        opened.update(range(port, p.get("endPort", port) + 1))
    return opened


def check_network_policy(docs, deployment, sidecar, where):
    """A NetworkPolicy selects the pod: the metrics port only from selected
    pods, the health port not from the pod network at large, the model
    server's ports from anywhere as without a policy, egress untouched."""
    template = deployment["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    spec = template["spec"]
    policies = [p for p in by_kind(docs, "NetworkPolicy")
                if all(labels.get(k) == v for k, v in
                       p["spec"]["podSelector"].get("matchLabels", {}).items())]
    expect(policies, f"{where}: no NetworkPolicy selects the pod "
           "(components/networkpolicy)")
    container_ports = {p["name"]: p["containerPort"]
                       for c in spec.get("initContainers", []) + spec["containers"]
                       for p in c.get("ports", []) if "name" in p}
    sidecar_ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    metrics, health = sidecar_ports["kvgate-metrics"], sidecar_ports["kvgate-health"]
    metrics_from = []
    for policy in policies:
        name = policy["metadata"]["name"]
        expect("Egress" not in policy["spec"].get("policyTypes", ["Ingress"]),
               f"{where}: NetworkPolicy {name} restricts egress")
        for rule in policy["spec"].get("ingress", []):
            opened = policy_ports(rule, container_ports)
            peers = rule.get("from") or []
            anyone = not peers or any(
                "ipBlock" in p and p["ipBlock"]["cidr"] in ("0.0.0.0/0", "::/0")
                for p in peers)
            for port, what in ((metrics, "kvgate-metrics"), (health, "kvgate-health")):
                expect(not (anyone and (opened is None or port in opened)),
                       f"{where}: NetworkPolicy {name} opens {what} ({port}) "
                       "to everyone")
            if opened is None or metrics in opened:
                metrics_from += peers
    expect(metrics_from and all("namespaceSelector" in p or "podSelector" in p
                                for p in metrics_from),
           f"{where}: no NetworkPolicy lets selected pods (Prometheus) reach "
           f"kvgate-metrics ({metrics}), or one lets an ipBlock in: {metrics_from}")
    for c in spec["containers"]:
        for p in c.get("ports", []):
            expect(any(not (r.get("from") or []) and
                       (policy_ports(r, container_ports) is None or
                        p["containerPort"] in policy_ports(r, container_ports))
                       for pol in policies for r in pol["spec"].get("ingress", [])),
                   f"{where}: container {c['name']}'s port "
                   f"{p.get('name', '')} ({p['containerPort']}) is closed by "
                   "the NetworkPolicy; it was open to all before")


def validate_config(kvgated, text, file_name, where):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / file_name
        path.write_text(text)
        proc = subprocess.run([kvgated, "--validate", f"--config={path}"],
                              capture_output=True, text=True, timeout=60)
    print(f"{where}: {proc.stdout.strip()}")
    expect(proc.returncode == 0 and "configuration is valid" in proc.stdout,
           f"{where}: kvgated --validate exited {proc.returncode}: "
           f"{proc.stderr.strip()}")


def check_pod_basics(spec, where):
    """Every container has an image; every mount names a pod volume."""
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        expect(c.get("image"),
               f"{where}: container {c['name']} has no image (does the "
               "sidecar patch name a container the Deployment does not "
               "have? Set the model server's container name in the "
               "component's sidecar.yaml)")
        for m in c.get("volumeMounts", []):
            expect(m["name"] in volumes,
                   f"{where}: container {c['name']} mounts volume "
                   f"{m['name']}, which the pod does not have")


def check_sidecar_ports(sidecar, where):
    ports = {p.get("name"): p.get("containerPort")
             for p in sidecar.get("ports", [])}
    health = int(flag(sidecar.get("args", []), "health_address").rsplit(":", 1)[1])
    expect(ports.get("kvgate-health") == health,
           f"{where}: kvgated's port kvgate-health is "
           f"{ports.get('kvgate-health')}, --health_address listens on {health}")
    expect("kvgate-metrics" in ports,
           f"{where}: kvgated has no port named kvgate-metrics")


def check_deployments(docs, where, kvgated):
    """Checks every Deployment with the sidecar; how many there are (>= 1)."""
    configmaps = {c["metadata"]["name"]: c for c in by_kind(docs, "ConfigMap")}
    injected = 0
    for deployment in by_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        sidecars = [c for c in spec.get("initContainers", [])
                    if c["name"] == SIDECAR]
        if not sidecars:
            continue
        injected += 1
        at = f"{where}: Deployment {deployment['metadata']['name']}"
        expect(all(c["name"] != SIDECAR for c in spec["containers"]),
               f"{at}: kvgated is also a regular container")
        sidecar = sidecars[0]
        expect(sidecar.get("restartPolicy") == "Always",
               f"{at}: kvgated is not a native sidecar "
               "(initContainers entry with restartPolicy: Always)")
        check_pod_basics(spec, at)
        check_probes(sidecar, at)
        check_sidecar_ports(sidecar, at)
        check_gpu_access(sidecar, spec["containers"], at)
        check_security(sidecar, at)
        text = check_volumes(spec, sidecar, spec["containers"], configmaps, at)
        check_state(spec, sidecar, text, at)
        labels = deployment["spec"]["template"]["metadata"].get("labels", {})
        check_monitoring(docs, labels, sidecar, text, at)
        config_file = os.path.basename(flag(sidecar["args"], "config"))
        validate_config(kvgated, text, config_file, at)
    expect(injected >= 1, f"{where}: no Deployment with the kvgated sidecar "
           "(does the component's sidecar.yaml name your Deployment?)")
    return injected


def find_kubectl():
    return shutil.which("kubectl")


def check_render(root, kvgated):
    kubectl = find_kubectl()
    if kubectl is None:
        print("SKIP: kubectl not found; the manifests were NOT rendered or "
              "checked (install kubectl >= 1.27 with kustomize 5)")
        return SKIP
    version = subprocess.run([kubectl, "version", "--client"],
                             capture_output=True, text=True).stdout
    print(version.strip())
    for overlay in overlays(root):
        where = str(overlay.relative_to(root))
        docs = render(kubectl, overlay)
        injected = check_deployments(docs, where, kvgated)
        for deployment in by_kind(docs, "Deployment"):
            sidecars = [c for c in deployment["spec"]["template"]["spec"]
                        .get("initContainers", []) if c["name"] == SIDECAR]
            if sidecars:
                check_network_policy(docs, deployment, sidecars[0],
                                     f"{where}: Deployment "
                                     f"{deployment['metadata']['name']}")
        print(f"{where}: {len(docs)} resources, {injected} Deployment(s) with "
              "the kvgated sidecar: all checks passed")
    return 0


# ---------------------------------------------------------------------------
# Recipes: every kustomize example the documentation gives, rendered and
# checked; and the two names of the sidecar component, left wrong on
# purpose, must be caught.

COMPONENT = "deploy/kubernetes/components/sidecar"
# The marked lines of the component's sidecar.yaml a user edits.
DEPLOYMENT_NAME = re.compile(r"^(  name: )(\S+)(\s+# \(1\).*)$", re.M)
CONTAINER_NAME = re.compile(r"^(        - name: )(\S+)(\s+# \(2\).*)$", re.M)

# The Deployment a user already has, for the README's "existing Deployment"
# recipe: names unlike the shipped ones on purpose.
APP_DEPLOYMENT = "llama-70b"
APP_CONTAINER = "engine"
APP = f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {APP_DEPLOYMENT}
spec:
  selector:
    matchLabels: {{app: llama}}
  template:
    metadata:
      labels: {{app: llama}}
    spec:
      containers:
        - name: {APP_CONTAINER}
          image: vllm/vllm-openai:v0.8.5
          ports:
            - {{name: http, containerPort: 8000}}
          resources:
            limits: {{nvidia.com/gpu: "1"}}
"""


def documented_paths(root):
    """Directories named by `kubectl kustomize DIR` / `kubectl apply -k DIR`
    in deploy/README.md and in the comments under deploy/kubernetes."""
    texts = [(root / "deploy/README.md").read_text()]
    texts += [f.read_text() for f in sorted((root / "deploy/kubernetes").rglob("*.yaml"))]
    found = set()
    for text in texts:
        for m in re.finditer(r"kubectl (?:kustomize|apply -k) (deploy/\S+)", text):
            found.add(m.group(1).rstrip("`.,)"))
    return sorted(found)


def readme_kustomizations(root):
    """The ```yaml blocks of deploy/README.md that are Kustomizations, as
    (first comment line, text)."""
    text = (root / "deploy/README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return [(b.splitlines()[0], b) for b in blocks
            if re.search(r"^kind: Kustomization$", b, re.M)]


def set_names(component_dir, deployment, container):
    """Edits the two marked names of a copy of the component (None: leave)."""
    path = component_dir / "sidecar.yaml"
    text = path.read_text()
    expect(DEPLOYMENT_NAME.search(text) and CONTAINER_NAME.search(text),
           f"{COMPONENT}/sidecar.yaml no longer marks the Deployment name "
           "'(1)' and the container name '(2)'")
    if deployment:
        text = DEPLOYMENT_NAME.sub(rf"\g<1>{deployment}\g<3>", text, count=1)
    if container:
        text = CONTAINER_NAME.sub(rf"\g<1>{container}\g<3>", text, count=1)
    path.write_text(text)


def build_recipe(root, tmp, header, block, deployment, container):
    """Lays out the README recipe `block` under tmp as a user would; the
    directory to render."""
    m = re.match(r"#\s*(\S+)/kustomization\.yaml", header)
    expect(m, f"deploy/README.md: a kustomize example starts {header!r}; "
           "begin it with `# DIR/kustomization.yaml` so the test can lay it out")
    kvgate = tmp / "kvgate"
    shutil.copytree(root / "deploy", kvgate / "deploy")
    here = tmp / m.group(1)
    here.mkdir()
    block = block.replace("<kvgate>", "../kvgate")
    doc = yaml.safe_load(block)
    for r in doc.get("resources", []):
        if r.startswith("../kvgate/"):
            continue
        expect(r == "../app", f"deploy/README.md recipe {header}: resource "
               f"{r} is neither kvgate's nor the user's app (../app)")
        (tmp / "app").mkdir()
        (tmp / "app/deployment.yaml").write_text(APP)
        (tmp / "app/kustomization.yaml").write_text(
            "resources:\n  - deployment.yaml\n")
    for c in doc.get("components", []):
        expect("/" not in c, f"deploy/README.md recipe {header}: component "
               f"{c} should be a copy beside the overlay")
        shutil.copytree(root / COMPONENT, here / c)
        set_names(here / c, deployment, container)
    for gen in doc.get("configMapGenerator", []):
        for f in gen.get("files", []):
            shutil.copy(root / "deploy/kubernetes/base" / os.path.basename(f),
                        here / f)
    (here / "kustomization.yaml").write_text(block)
    return here


def kustomize_fails(kubectl, directory):
    proc = subprocess.run([kubectl, "kustomize", str(directory)],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r"no resource matches[^;]*", proc.stderr)
    return proc.returncode != 0, (m.group(0).replace("\\", "") if m else
                                  proc.stderr.strip()[-300:])


def overlay_patches(root):
    """The ```yaml blocks of deploy/README.md that are patches for an
    overlay (first line `# in your overlay: patches: [{path: FILE}]`), as
    (file name, text)."""
    text = (root / "deploy/README.md").read_text()
    return re.findall(r"```yaml\n# in your overlay: patches: \[\{path: (\S+)\}\]"
                      r"\n(.*?)```", text, re.S)


def check_overlay_patch(root, kubectl, kvgated, name, block):
    """Applies a documented patch to a copy of the vllm overlay; the render
    passes the checks and has the patch's volumes as the patch says."""
    where = f"deploy/README.md patch {name}"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(root / "deploy", pathlib.Path(tmp) / "deploy")
        overlay = pathlib.Path(tmp) / "deploy/kubernetes/overlays/vllm"
        (overlay / name).write_text(block)
        with open(overlay / "kustomization.yaml", "a") as f:
            f.write(f"patches:\n  - path: {name}\n")
        docs = render(kubectl, overlay)
    check_deployments(docs, where, kvgated)
    patch = yaml.safe_load(block)
    deployment = [d for d in by_kind(docs, "Deployment")
                  if d["metadata"]["name"] == patch["metadata"]["name"]]
    expect(deployment, f"{where}: no Deployment {patch['metadata']['name']}")
    volumes = {v["name"]: v for v in
               deployment[0]["spec"]["template"]["spec"].get("volumes", [])}
    for want in patch["spec"]["template"]["spec"].get("volumes", []):
        got = volumes.get(want["name"], {})
        for key, value in want.items():
            expect(got.get(key) == value if value is not None else key not in got,
                   f"{where}: volume {want['name']} renders as {got}, the "
                   f"patch sets {key}: {value}")
    print(f"{where} on overlays/vllm: {len(docs)} resources, checked; "
          "its volumes render as written")


def check_recipes(root, kvgated):
    kubectl = find_kubectl()
    if kubectl is None:
        print("SKIP: kubectl not found; the recipes were NOT rendered")
        return SKIP
    paths = documented_paths(root)
    expect(paths, "found no `kubectl kustomize` / `kubectl apply -k` in the docs")
    for path in paths:
        expect((root / path / "kustomization.yaml").exists(),
               f"the docs render {path}, which has no kustomization.yaml")
        docs = render(kubectl, root / path)
        if by_kind(docs, "Deployment"):
            check_deployments(docs, path, kvgated)
        print(f"documented `kubectl kustomize {path}`: {len(docs)} resources, "
              "checked")
    for name, block in overlay_patches(root):
        check_overlay_patch(root, kubectl, kvgated, name, block)
    blocks = readme_kustomizations(root)
    expect(blocks, "deploy/README.md has no kustomize example")
    for header, block in blocks:
        where = f"deploy/README.md {header.lstrip('# ')}"
        with tempfile.TemporaryDirectory() as tmp:
            d = build_recipe(root, pathlib.Path(tmp), header, block,
                             APP_DEPLOYMENT, APP_CONTAINER)
            docs = render(kubectl, d)
            check_deployments(docs, where, kvgated)
            print(f"{where}, both names set: {len(docs)} resources, checked")
        # The mistakes: each must be caught, by kustomize where it can be.
        mistakes = [
            ("both names left as shipped", None, None, True),
            ("only the container name set", None, APP_CONTAINER, True),
            ("only the Deployment name set", APP_DEPLOYMENT, None, False),
        ]
        for what, deployment, container, loud in mistakes:
            with tempfile.TemporaryDirectory() as tmp:
                d = build_recipe(root, pathlib.Path(tmp), header, block,
                                 deployment, container)
                failed, last = kustomize_fails(kubectl, d)
                if failed:
                    print(f"{where}, {what}: kubectl kustomize fails: {last}")
                    continue
                expect(not loud, f"{where}, {what}: kubectl kustomize exits "
                       "0; it should fail loudly")
                try:
                    check_deployments(render(kubectl, d), where, kvgated)
                except CheckError as e:
                    print(f"{where}, {what}: kustomize renders it, the check "
                          f"catches it: {e}")
                    continue
                raise CheckError(f"{where}, {what}: rendered and passed the "
                                 "checks; the mistake went unnoticed")
    return 0


# ---------------------------------------------------------------------------
# The runbook: where the alerts' runbook_url points, and the names it uses.

RULE_FILES = ("deploy/prometheus/kvgate-rules.yaml",
              "deploy/prometheus/prometheusrule.yaml")


def github_anchors(markdown):
    """The anchors GitHub gives a Markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def rule_alerts(doc):
    groups = doc.get("groups") or doc.get("spec", {}).get("groups", [])
    for group in groups:
        for rule in group.get("rules", []):
            if "alert" in rule:
                yield rule


def runbook_names(text):
    """(containers, ports) the runbook names: `-c NAME`, `--container=NAME`,
    "the `NAME` container", "container `NAME`", "port `NAME`"."""
    containers = set(re.findall(r"(?:\s-c|--container[= ])\s*([\w.-]+)", text))
    containers |= set(re.findall(r"the `([\w.-]+)` container", text))
    containers |= set(re.findall(r"container `([\w.-]+)`", text))
    ports = set(re.findall(r"\bport `([\w.-]+)`", text))
    return containers, ports


def check_runbook_names(text, docs, where):
    containers, ports = set(), set()
    for d in by_kind(docs, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            containers.add(c["name"])
            ports |= {p["name"] for p in c.get("ports", []) if "name" in p}
    named_containers, named_ports = runbook_names(text)
    expect(named_containers and named_ports,
           f"{where}: names no container or no port")
    bad = sorted(named_containers - containers)
    expect(not bad, f"{where} names container(s) {bad}; the rendered "
           f"manifests have {sorted(containers)}")
    bad = sorted(named_ports - ports)
    expect(not bad, f"{where} names port(s) {bad}; the rendered manifests "
           f"have {sorted(ports)}")
    return named_containers, named_ports


def check_runbook(root, _):
    checked = 0
    for rule_file in RULE_FILES:
        doc = yaml.safe_load((root / rule_file).read_text())
        for rule in rule_alerts(doc):
            alert = rule["alert"]
            url = rule.get("annotations", {}).get("runbook_url")
            expect(url, f"{rule_file}: alert {alert} has no runbook_url")
            expect("#" in url and "://" not in url,
                   f"{rule_file}: {alert}'s runbook_url {url} is not a "
                   "repository path with an anchor (docs/runbook.md#...)")
            path, anchor = url.split("#", 1)
            target = root / path
            expect(target.is_file(), f"{rule_file}: {alert}'s runbook_url "
                   f"{url}: no file {path} in the repository")
            expect(anchor in github_anchors(target.read_text()),
                   f"{rule_file}: {alert}'s runbook_url {url}: {path} has "
                   f"no heading with anchor #{anchor}")
            checked += 1
    print(f"runbook_url: {checked} alerts in {len(RULE_FILES)} rule files, "
          "each a file and heading of the repository")
    kubectl = find_kubectl()
    if kubectl is None:
        print("SKIP: kubectl not found; the runbook's container and port "
              "names were NOT checked against the rendered manifests")
        return SKIP
    docs = []
    for overlay in overlays(root):
        docs += render(kubectl, overlay)
    runbook = root / "docs/runbook.md"
    containers, ports = check_runbook_names(runbook.read_text(), docs,
                                            "docs/runbook.md")
    print(f"docs/runbook.md names containers {sorted(containers)} and ports "
          f"{sorted(ports)}: all in the rendered manifests")
    return 0


# ---------------------------------------------------------------------------
# The config on its own, yamllint, the Dockerfile.


def check_config(root, kvgated):
    path = root / "deploy/kubernetes/base/kvgate.txtpb"
    validate_config(kvgated, path.read_text(), path.name, "base/kvgate.txtpb")
    return 0


def lint_targets(root):
    files = sorted((root / "deploy/kubernetes").rglob("*.yaml"))
    files += [root / "deploy/prometheus/kustomization.yaml",
              root / "deploy/grafana/kustomization.yaml"]
    return files


def check_lint(root, _):
    yamllint = shutil.which("yamllint")
    expect(yamllint, "yamllint not found: install Debian's `yamllint` "
           "(scripts/install-deps.sh)")
    config = root / "deploy/kubernetes/.yamllint.yaml"
    files = [str(f) for f in lint_targets(root)]
    proc = subprocess.run([yamllint, "--strict", "-c", str(config)] + files,
                          capture_output=True, text=True, timeout=60)
    print(proc.stdout + proc.stderr)
    expect(proc.returncode == 0, f"yamllint exited {proc.returncode}")
    print(f"yamllint: {len(files)} files clean")
    return 0


def dockerfile_stages(text):
    return re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)


def runtime_packages(root):
    script = (root / "scripts/install-deps.sh").read_text()
    m = re.search(r"RUNTIME_PACKAGES=\(([^)]*)\)", script)
    expect(m, "scripts/install-deps.sh has no RUNTIME_PACKAGES")
    return m.group(1).split()


def depends_closure(packages):
    """`packages` and everything they depend on, as dpkg records it here."""
    seen, todo = set(), list(packages)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", p],
                              capture_output=True, text=True)
        for alternative in re.split(r"[,|]", proc.stdout):
            name = alternative.strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def check_runtime_libraries(root, kvgated):
    proc = subprocess.run(["ldd", kvgated], capture_output=True, text=True)
    expect(proc.returncode == 0, f"ldd {kvgated} failed: {proc.stderr}")
    libraries = re.findall(r"=>\s+(/\S+)", proc.stdout)
    covered = depends_closure(runtime_packages(root) + ["libc6", "libstdc++6",
                                                        "libgcc-s1"])
    missing = []
    for lib in libraries:
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(lib)],
                               capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", lib], capture_output=True,
                                   text=True)
        package = owner.stdout.split(":")[0] if owner.returncode == 0 else None
        if package not in covered:
            missing.append(f"{lib} ({package or 'no package'})")
    expect(not missing, "kvgated loads libraries that install-deps.sh "
           "--runtime does not install: " + ", ".join(missing))
    print(f"runtime image: {len(libraries)} shared libraries of kvgated, all "
          f"from RUNTIME_PACKAGES ({', '.join(runtime_packages(root))}) or "
          "their dependencies")


def check_dockerfile(root, kvgated):
    text = (root / "deploy/docker/Dockerfile").read_text()
    stages = dockerfile_stages(text)
    expect(len(stages) >= 2, f"Dockerfile has {len(stages)} stage(s); "
           "expected a build and a runtime stage")
    default = re.search(r"^ARG\s+DEBIAN_IMAGE=(\S+)", text, re.M)
    for image, name in stages:
        resolved = image.replace("${DEBIAN_IMAGE}",
                                 default.group(1) if default else "")
        expect(re.fullmatch(r"debian:bookworm(-slim)?(@sha256:\w+)?", resolved),
               f"stage {name or image} is based on {resolved}, not Debian bookworm")
    runtime = text[text.rfind("\nFROM "):]
    build = text[:text.rfind("\nFROM ")]
    expect(re.search(r"install-deps\.sh(\s|$)", build) and
           "install-deps.sh --runtime" not in build,
           "the build stage must install with scripts/install-deps.sh")
    expect("install-deps.sh --runtime" in runtime,
           "the runtime stage must install with install-deps.sh --runtime")
    expect(not re.search(r"^COPY\s+(\.|--chown\S*\s+\.)\s", runtime, re.M),
           "the runtime stage must not copy the source tree")
    expect(re.search(r"^COPY --from=\S+\s+\S*kvgated\s", runtime, re.M),
           "the runtime stage must copy kvgated from the build stage")
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    expect(users, "the runtime stage sets no USER")
    uid = users[-1].split(":")[0]
    expect(uid.isdigit() and int(uid) != 0,
           f"USER {users[-1]} should be a numeric non-root uid "
           "(runAsNonRoot cannot verify a name)")
    entry = re.findall(r"^ENTRYPOINT\s+(.+)$", runtime, re.M)
    expect(entry and re.fullmatch(r'\["[^"]*/kvgated"\]', entry[-1].strip()),
           f"ENTRYPOINT should be [\".../kvgated\"] in exec form, is {entry}")
    # The sidecar and the image agree on the user.
    sidecar = (root / "deploy/kubernetes/components/sidecar/sidecar.yaml").read_text()
    m = re.search(r"runAsUser:\s*(\d+)", sidecar)
    expect(m and m.group(1) == uid,
           f"the sidecar runs as {m and m.group(1)}, the image as {uid}")
    ignore = root / ".dockerignore"
    expect(ignore.exists(), "no .dockerignore at the build context root")
    ignored = ignore.read_text().split()
    for entry_name in (".git", "build"):
        expect(entry_name in ignored, f".dockerignore should exclude {entry_name}")
    print("Dockerfile: stages " + ", ".join(n or i for i, n in stages) +
          f"; USER {users[-1]}; ENTRYPOINT {entry[-1].strip()} "
          "(static checks only: no image was built)")
    check_runtime_libraries(root, kvgated)
    return 0


CHECKS = {
    "render": check_render,
    "recipes": check_recipes,
    "runbook": check_runbook,
    "config": check_config,
    "lint": check_lint,
    "dockerfile": check_dockerfile,
}


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--kvgated=")]
    kvgated = next((a.split("=", 1)[1] for a in argv[1:]
                    if a.startswith("--kvgated=")), None)
    if len(args) != 2 or args[1] not in CHECKS:
        print(__doc__)
        return 2
    root = pathlib.Path(args[0]).resolve()
    if args[1] in ("render", "recipes", "config", "dockerfile") and not kvgated:
        print(f"{args[1]} needs --kvgated=PATH")
        return 2
    try:
        expect(not kvgated or os.access(kvgated, os.X_OK),
               f"kvgated binary {kvgated} not found (build the kvgated target)")
        return CHECKS[args[1]](root, kvgated)
    except CheckError as e:
        print(f"FAIL: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
