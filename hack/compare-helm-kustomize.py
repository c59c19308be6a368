#!/usr/bin/env python3
"""Check that the Helm chart renders the same objects as the kustomize bases.

  hack/compare-helm-kustomize.py            # exit 0 when equal, 1 with a diff otherwise

Cases:
  - chart defaults                          == kubectl kustomize deploy/base
  - watchNamespaces=[team-a, team-b]        == kubectl kustomize deploy/namespaced
  - replicas=2                              == deploy/base with the deploy/ha component
  - monitoring.{serviceMonitor,prometheusRule,dashboard}.enabled
                                            == deploy/base with the component deploy/monitoring
  - charts/inbox-operator/files/crds/ holds byte-identical copies of crds/*.agentsend.io.yaml
  - a few non-default values render what they promise (no default key, fullnameOverride,
    metrics port, no binding-check ClusterRole, CRDs off or not kept, no aggregated roles, the
    PodDisruptionBudget, the monitoring objects' options) and values the chart refuses are
    refused: replicas > 1 without leaderElect, a ServiceMonitor without the metrics Service,
    and misspelled keys at any level (values.schema.json)
Both renders use release name and namespace `inbox-operator`. The Namespace object (kustomize
creates it; Helm uses --create-namespace) is not compared, and the CRDs are compared without
the chart's `helm.sh/resource-policy: keep` annotation (`crds.keep`).

Tools: `helm` and `kubectl` from $HELM and $KUBECTL, else the ones built with the test control
plane by hack/envtest-assets.sh (helm v3.22.0, kubectl of the tested Kubernetes version), else
PATH. `helm lint --strict` runs on every set of values. Needs PyYAML.
"""

import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(var, name):
    """$VAR, else NAME from the test control plane's assets dir, else NAME on PATH."""
    if os.environ.get(var):
        return os.environ[var]
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and os.access(os.path.join(assets, name), os.X_OK):
        return os.path.join(assets, name)
    return name


HELM = tool("HELM", "helm")
KUBECTL = tool("KUBECTL", "kubectl")
CHART = os.path.join(ROOT, "charts", "inbox-operator")
RELEASE = NAMESPACE = "inbox-operator"
# (name, chart values, kustomization: a directory, or (resources, components) rendered through
# a temporary overlay)
CASES = [
    ("defaults vs deploy/base", {}, "deploy/base"),
    (
        "watchNamespaces vs deploy/namespaced",
        {"watchNamespaces": ["team-a", "team-b"]},
        "deploy/namespaced",
    ),
    ("replicas: 2 vs deploy/base + deploy/ha", {"replicas": 2}, (["deploy/base"], ["deploy/ha"])),
]
SKIPPED_KINDS = {"Namespace"}
KEEP = "helm.sh/resource-policy"
MONITORING = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(path):
    """`kubectl kustomize` of a directory of the repository, or of an overlay of
    (resources, components) written to a temporary directory (kustomize wants relative paths)."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(path, tuple):
            resources, components = path
            rel = lambda p: os.path.relpath(os.path.join(ROOT, p), tmp)  # noqa: E731
            with open(os.path.join(tmp, "kustomization.yaml"), "w") as f:
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "resources": [rel(r) for r in resources],
                        "components": [rel(c) for c in components],
                    },
                    f,
                )
            target = tmp
        else:
            target = os.path.join(ROOT, path)
        out = subprocess.run(
            [KUBECTL, "kustomize", target],
            check=True,
            capture_output=True,
            text=True,
        )
    return docs(out.stdout)


def kustomize_with_monitoring():
    """deploy/base with the component deploy/monitoring, as a user's overlay would add it."""
    with tempfile.TemporaryDirectory() as overlay:
        with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(os.path.join(ROOT, "deploy", "base"), overlay)],
                    "components": [os.path.relpath(os.path.join(ROOT, "deploy", "monitoring"), overlay)],
                },
                f,
            )
        return kustomize(overlay)


def helm(values):
    with_values = []
    if values:
        # JSON is YAML: one --values file instead of --set escaping.
        vf = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(values, vf)
        vf.close()
        with_values = ["--values", vf.name]
    lint = subprocess.run(
        [HELM, "lint", "--strict", CHART, *with_values], capture_output=True, text=True
    )
    if lint.returncode != 0:
        raise SystemExit(f"helm lint failed:\n{lint.stdout}{lint.stderr}")
    out = subprocess.run(
        [HELM, "template", RELEASE, CHART, "--namespace", NAMESPACE, *with_values],
        check=True,
        capture_output=True,
        text=True,
    )
    return docs(out.stdout)


def key(obj):
    m = obj.get("metadata", {})
    return (obj.get("apiVersion"), obj.get("kind"), m.get("namespace", ""), m.get("name"))


def index(objs):
    res = {}
    for o in objs:
        if o.get("kind") in SKIPPED_KINDS:
            continue
        k = key(o)
        if k in res:
            raise SystemExit(f"duplicate object {k}")
        res[k] = o
    return res


def without_keep(objs):
    """The chart's CRDs as kustomize has them: without `helm.sh/resource-policy: keep`."""
    out = []
    for o in objs:
        meta = o.get("metadata", {})
        if o.get("kind") == "CustomResourceDefinition" and KEEP in meta.get("annotations", {}):
            o = json.loads(json.dumps(o))
            del o["metadata"]["annotations"][KEEP]
            if not o["metadata"]["annotations"]:
                del o["metadata"]["annotations"]
        out.append(o)
    return out


def dump(o):
    return yaml.safe_dump(o, sort_keys=True, default_flow_style=False).splitlines()


def compare(name, helm_objs, kustomize_objs):
    h, k = index(helm_objs), index(kustomize_objs)
    problems = []
    for missing in sorted(set(k) - set(h), key=str):
        problems.append(f"only in kustomize: {missing}")
    for extra in sorted(set(h) - set(k), key=str):
        problems.append(f"only in helm: {extra}")
    for common in sorted(set(h) & set(k), key=str):
        if h[common] != k[common]:
            diff = difflib.unified_diff(
                dump(k[common]), dump(h[common]), "kustomize", "helm", lineterm=""
            )
            problems.append(f"differs: {common}\n" + "\n".join(diff))
    for p in problems:
        print(f"FAIL {name}: {p}")
    return not problems


def crd_copy_matches():
    ok = True
    names = sorted(n for n in os.listdir(os.path.join(ROOT, "crds")) if n.endswith(".agentsend.io.yaml"))
    copies = sorted(os.listdir(os.path.join(CHART, "files", "crds")))
    if names != copies:
        print(f"FAIL chart CRDs: files/crds/ holds {copies}, crds/ {names} (run `make crd`)")
        ok = False
    for name in names:
        with open(os.path.join(ROOT, "crds", name), "rb") as f:
            want = f.read()
        try:
            with open(os.path.join(CHART, "files", "crds", name), "rb") as f:
                got = f.read()
        except FileNotFoundError:
            got = None
        if want != got:
            print(f"FAIL chart CRD: charts/inbox-operator/files/crds/{name} differs from crds/ (run `make crd`)")
            ok = False
    return ok


def deployment(objs):
    return next(o for o in objs if o.get("kind") == "Deployment")


def other_values(render):
    """Non-default values render what they promise."""
    results = []

    def check(name, values, predicate):
        try:
            ok = bool(predicate(render(values)))
        except (subprocess.CalledProcessError, SystemExit, Exception) as e:  # noqa: BLE001
            print(f"FAIL {name}: {e}")
            ok = False
        else:
            if not ok:
                print(f"FAIL {name}")
        results.append(ok)

    def args(objs):
        return deployment(objs)["spec"]["template"]["spec"]["containers"][0]["args"]

    check(
        "no default key",
        {"existingSecret": {"name": ""}},
        lambda o: "--no-default-key" in args(o)
        and "volumes" not in deployment(o)["spec"]["template"]["spec"],
    )
    check(
        "fullnameOverride names everything and the Lease (a shard: the CRDs left to the first)",
        {"fullnameOverride": "shard-b", "selector": "shard=b", "crds": {"enabled": False}},
        lambda o: all(x["metadata"]["name"].startswith("shard-b") for x in o)
        and "--lease-name=shard-b" in args(o)
        and "--selector=shard=b" in args(o),
    )

    def kinds(objs, kind):
        return [x for x in objs if x["kind"] == kind]

    def kept(crd):
        return crd["metadata"].get("annotations", {}).get(KEEP) == "keep"

    check(
        "CRDs installed and kept on uninstall by default",
        {},
        lambda o: len(kinds(o, "CustomResourceDefinition")) == 3
        and all(kept(c) for c in kinds(o, "CustomResourceDefinition")),
    )
    check(
        "crds.enabled: false renders no CRD",
        {"crds": {"enabled": False}},
        lambda o: not kinds(o, "CustomResourceDefinition"),
    )
    check(
        "crds.keep: false: CRDs without the keep annotation",
        {"crds": {"keep": False}},
        lambda o: len(kinds(o, "CustomResourceDefinition")) == 3
        and not any(kept(c) for c in kinds(o, "CustomResourceDefinition")),
    )

    def aggregated(objs):
        return {
            x["metadata"]["name"]: sorted(
                k.rsplit("/", 1)[1] for k in x["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/")
            )
            for x in kinds(objs, "ClusterRole")
            if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in x["metadata"]["labels"])
        }

    def never_cluster_accounts(objs):
        return all(
            not any("clusteraccounts" in r for rule in x["rules"] for r in rule["resources"])
            for x in kinds(objs, "ClusterRole")
            if x["metadata"]["name"].endswith(("-view", "-edit"))
        )

    check(
        "aggregated ClusterRoles: view into view; edit into edit and admin; never ClusterAccounts",
        {},
        lambda o: aggregated(o)
        == {
            "inbox-operator-view": ["aggregate-to-view"],
            "inbox-operator-edit": ["aggregate-to-admin", "aggregate-to-edit"],
        }
        and never_cluster_accounts(o),
    )
    check(
        "aggregatedClusterRoles: false renders none",
        {"aggregatedClusterRoles": False},
        lambda o: aggregated(o) == {},
    )
    check(
        "replicas: 2 gets a PodDisruptionBudget keeping one pod",
        {"replicas": 2},
        lambda o: [p["spec"]["minAvailable"] for p in kinds(o, "PodDisruptionBudget")] == [1],
    )
    check(
        "podDisruptionBudget.enabled: false renders none",
        {"replicas": 2, "podDisruptionBudget": {"enabled": False}},
        lambda o: not kinds(o, "PodDisruptionBudget"),
    )
    check(
        "plain metrics: no TokenReview RBAC, port named http",
        {"metrics": {"secure": False}},
        lambda o: "--metrics-secure=false" in args(o)
        and not any("metrics-auth" in x["metadata"]["name"] for x in o)
        and deployment(o)["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
        == "http",
    )
    check(
        "metrics port",
        {"metrics": {"port": 9090}},
        lambda o: "--metrics-addr=0.0.0.0:9090" in args(o),
    )
    check(
        "no binding-check ClusterRole when disabled",
        {"watchNamespaces": ["a"], "bindingCheckClusterRole": False},
        lambda o: not any("binding-check" in x["metadata"]["name"] for x in o),
    )
    check(
        "namespaced: ClusterAccounts readable, their key Secrets in the release namespace only",
        {"watchNamespaces": ["a"]},
        lambda o: any(x["kind"] == "ClusterRole" and x["metadata"]["name"].endswith("-clusteraccounts") for x in o)
        and any(x["kind"] == "Role" and x["metadata"]["name"].endswith("-account-keys") for x in o),
    )
    check(
        "no cluster-wide access but metrics authentication with both ClusterRoles disabled",
        {"watchNamespaces": ["a"], "bindingCheckClusterRole": False, "clusterAccounts": False},
        # (The aggregated -view/-edit ClusterRoles are for people and bound to no one here.)
        lambda o: not any(
            x["kind"].startswith("Cluster")
            and "metrics" not in x["metadata"]["name"]
            and not (x["kind"] == "ClusterRole" and x["metadata"]["name"].endswith(("-view", "-edit")))
            for x in o
        ),
    )

    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    def network_policy(objs):
        return next(x for x in objs if x["kind"] == "NetworkPolicy")

    check(
        "metricsFrom narrows the metrics port's ingress, not the probe port's",
        {"networkPolicy": {"metricsFrom": monitoring}},
        lambda o: network_policy(o)["spec"]["ingress"]
        == [
            {"ports": [{"port": "https", "protocol": "TCP"}], "from": monitoring},
            {"ports": [{"port": "health", "protocol": "TCP"}]},
        ],
    )

    def kind(objs, k):
        return next(x for x in objs if x["kind"] == k)

    def endpoint(objs):
        return kind(objs, "ServiceMonitor")["spec"]["endpoints"][0]

    with open(os.path.join(ROOT, "deploy", "monitoring", "alerts.yaml")) as f:
        alerts = yaml.safe_load(f)
    with open(os.path.join(ROOT, "deploy", "monitoring", "dashboard.json")) as f:
        dashboard = f.read()

    def monitoring(**kw):
        return {"monitoring": {k: dict(v, enabled=True) for k, v in kw.items()}}

    check(
        "monitoring: off by default",
        {},
        lambda o: not any(x["kind"] in ("ServiceMonitor", "PrometheusRule") or "dashboard" in x["metadata"]["name"] for x in o),
    )
    check(
        "monitoring: the PrometheusRule holds alerts.yaml; its additionalLabels",
        monitoring(prometheusRule={"additionalLabels": {"release": "kube-prometheus-stack"}}),
        lambda o: kind(o, "PrometheusRule")["spec"] == alerts
        and kind(o, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack",
    )
    check(
        "monitoring: the dashboard ConfigMap holds dashboard.json; labels, annotations, namespace",
        monitoring(
            dashboard={
                "labels": {"grafana_dashboard": "inbox"},
                "annotations": {"grafana_folder": "Operators"},
                "namespace": "monitoring",
            }
        ),
        lambda o: kind(o, "ConfigMap")["data"] == {"inbox-operator.json": dashboard}
        and kind(o, "ConfigMap")["metadata"]["labels"]["grafana_dashboard"] == "inbox"
        and kind(o, "ConfigMap")["metadata"]["annotations"] == {"grafana_folder": "Operators"}
        and kind(o, "ConfigMap")["metadata"]["namespace"] == "monitoring",
    )
    check(
        "monitoring: the ServiceMonitor selects the metrics Service of a renamed release",
        dict(monitoring(serviceMonitor={}), fullnameOverride="shard-b"),
        lambda o: kind(o, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
        == next(x for x in o if x["kind"] == "Service")["metadata"]["labels"]
        and kind(o, "ServiceMonitor")["metadata"]["name"] == "shard-b",
    )
    check(
        "monitoring: a ServiceMonitor of plain metrics scrapes http with no token",
        dict(monitoring(serviceMonitor={}), metrics={"secure": False}),
        lambda o: endpoint(o) == {"port": "http", "path": "/metrics", "honorLabels": True, "scheme": "http"},
    )
    authorization = {"type": "Bearer", "credentials": {"name": "prometheus-token", "key": "token"}}
    check(
        "monitoring: ServiceMonitor options (authorization instead of bearerTokenFile, TLS, interval, labels)",
        monitoring(
            serviceMonitor={
                "authorization": authorization,
                "tlsConfig": {"insecureSkipVerify": False, "serverName": "inbox-operator-metrics.inbox-operator.svc"},
                "interval": "30s",
                "scrapeTimeout": "10s",
                "additionalLabels": {"release": "prom"},
                "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "x"}],
            }
        ),
        lambda o: endpoint(o)
        == {
            "port": "https",
            "path": "/metrics",
            "honorLabels": True,
            "scheme": "https",
            "authorization": authorization,
            "tlsConfig": {"insecureSkipVerify": False, "serverName": "inbox-operator-metrics.inbox-operator.svc"},
            "interval": "30s",
            "scrapeTimeout": "10s",
            "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "x"}],
        }
        and kind(o, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom",
    )

    def refused(values):
        try:
            render(values)
        except (Exception, SystemExit):  # noqa: BLE001 (CalledProcessError or a lint failure)
            return True
        return False

    for name, values in [
        ("replicas: 2 without leaderElect", {"replicas": 2, "leaderElect": False}),
        # values.schema.json: additionalProperties false at every level.
        ("a misspelled top-level key", {"replicsa": 2}),
        ("a misspelled key of the chart's", {"crds": {"kep": False}}),
        ("a misspelled Kubernetes field", {"resources": {"requets": {"cpu": "1"}}}),
        ("a misspelled field deep in a Kubernetes value", {"securityContext": {"capabilities": {"dorp": ["ALL"]}}}),
        ("a wrong type", {"crds": {"enabled": "yes"}}),
        ("a ServiceMonitor without the metrics Service", dict(monitoring(serviceMonitor={}), metrics={"service": False})),
        ("a misspelled monitoring key", {"monitoring": {"serviceMonitor": {"enable": True}}}),
    ]:
        ok = refused(values)
        if not ok:
            print(f"FAIL {name} renders: {values}")
        results.append(ok)
    return results


def main():
    if not shutil.which(HELM):
        print(f"compare-helm-kustomize: no helm at {HELM!r} (run hack/envtest-assets.sh, or set HELM)")
        return 1
    render = helm
    passed = failed = 0
    for name, values, path in CASES:
        ok = compare(name, without_keep(render(values)), kustomize(path))
        passed, failed = passed + ok, failed + (not ok)
    ok = compare(
        "monitoring values vs deploy/base + component deploy/monitoring",
        without_keep(render(MONITORING)),
        kustomize_with_monitoring(),
    )
    passed, failed = passed + ok, failed + (not ok)
    for ok in other_values(render):
        passed, failed = passed + ok, failed + (not ok)
    ok = crd_copy_matches()
    passed, failed = passed + ok, failed + (not ok)
    print(f"compare-helm-kustomize ({HELM}): {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
