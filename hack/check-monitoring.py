#!/usr/bin/env python3
"""Check the monitoring kit in deploy/monitoring/ (alerts, their tests, the dashboard, runbooks).

  hack/check-monitoring.py            # check; exit 0 when everything holds, 1 otherwise
  hack/check-monitoring.py --write    # (re)write the copies below from the canonical files

Canonical files and their copies (the chart cannot read files outside its directory, and a
kustomize PrometheusRule cannot include a rule file):
  deploy/monitoring/alerts.yaml    -> charts/inbox-operator/files/alerts.yaml (byte copy)
                                   -> deploy/monitoring/prometheusrule.yaml (the rule file as
                                      a PrometheusRule's spec)
  deploy/monitoring/dashboard.json -> charts/inbox-operator/files/dashboard.json (byte copy)

Checks:
  - the copies are up to date (`make monitoring` rewrites them);
  - `promtool check rules --lint=all --lint-fatal` on alerts.yaml and `promtool test rules`
    on alerts_test.yaml (promtool from $PROMTOOL, else hack/promtool.sh builds/caches it);
  - every alert has a severity, a summary, a description and a runbook_url naming its own
    section of docs/runbooks.md, and every section there is an alert's;
  - alerts_test.yaml has, for every alert, a case where it fires and one where it does not,
    and tests no alert that does not exist;
  - dashboard.json parses, has a uid and a title, takes its data source from the
    `${datasource}` variable everywhere (no data source UID hard-coded, no import-only
    `__inputs`), has unique panel ids, and every query (panels and variables) parses as PromQL
    (through promtool, with the Grafana variables substituted).
That every metric and label the rules, their tests and the dashboard use is one the operator
exports is checked against a running operator's /metrics by tests/it/monitoring.rs.
Needs PyYAML.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MON = os.path.join(ROOT, "deploy", "monitoring")
CHART_FILES = os.path.join(ROOT, "charts", "inbox-operator", "files")
ALERTS = os.path.join(MON, "alerts.yaml")
TESTS = os.path.join(MON, "alerts_test.yaml")
DASHBOARD = os.path.join(MON, "dashboard.json")
PROMETHEUS_RULE = os.path.join(MON, "prometheusrule.yaml")
RUNBOOKS = os.path.join(ROOT, "docs", "runbooks.md")
RUNBOOK_URL = "https://github.com/inbox-operator/inbox-operator/blob/main/docs/runbooks.md"
SEVERITIES = {"critical", "warning", "info"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

PROMETHEUS_RULE_HEAD = """\
# GENERATED from alerts.yaml by `make monitoring` (hack/check-monitoring.py --write); do not
# edit: edit alerts.yaml. The same rules as the chart's monitoring.prometheusRule.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: inbox-operator
  namespace: inbox-operator
  labels:
    app.kubernetes.io/name: inbox-operator
spec:
"""


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def prometheus_rule(rules_text):
    body = "".join("  " + line if line.strip() else line for line in rules_text.splitlines(True))
    return PROMETHEUS_RULE_HEAD + body


def copies():
    """(path, wanted bytes) of every copy."""
    alerts = read(ALERTS, "rb")
    return [
        (os.path.join(CHART_FILES, "alerts.yaml"), alerts),
        (os.path.join(CHART_FILES, "dashboard.json"), read(DASHBOARD, "rb")),
        (PROMETHEUS_RULE, prometheus_rule(alerts.decode()).encode()),
    ]


def write_copies():
    os.makedirs(CHART_FILES, exist_ok=True)
    for path, want in copies():
        with open(path, "wb") as f:
            f.write(want)
        print(f"wrote {os.path.relpath(path, ROOT)}")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, problems):
        problems = [p for p in problems if p]
        if problems:
            self.failed += 1
            for p in problems:
                print(f"FAIL {name}: {p}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def promtool():
    if os.environ.get("PROMTOOL"):
        return os.environ["PROMTOOL"]
    out = subprocess.run(
        [os.path.join(ROOT, "hack", "promtool.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return out.stdout.strip()


def run(cmd, cwd=None):
    """Problems of running cmd: none when it exits 0, else its output."""
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode == 0:
        return []
    return [f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stdout}{out.stderr}"]


def alerts_of(rules):
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def runbook_sections():
    return [m.group(1) for m in re.finditer(r"^## (\S+)\s*$", read(RUNBOOKS), re.M)]


def check_alerts(rules):
    problems = []
    sections = runbook_sections()
    names = [a["alert"] for a in alerts_of(rules)]
    for a in alerts_of(rules):
        name = a["alert"]
        if a.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity label not one of {sorted(SEVERITIES)}")
        ann = a.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(ann.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")
        want = f"{RUNBOOK_URL}#{name.lower()}"
        if ann.get("runbook_url") != want:
            problems.append(f"{name}: runbook_url is {ann.get('runbook_url')!r}, want {want!r}")
        if name not in sections:
            problems.append(f"{name}: no section '## {name}' in docs/runbooks.md")
    for s in sections:
        if s not in names:
            problems.append(f"docs/runbooks.md has a section '## {s}' for no alert")
    if len(set(names)) != len(names):
        problems.append(f"duplicate alert names: {names}")
    return problems


def check_tests(rules, tests):
    names = {a["alert"] for a in alerts_of(rules)}
    fires, quiet = set(), set()
    problems = []
    for group in tests.get("tests") or []:
        for t in group.get("alert_rule_test") or []:
            name = t["alertname"]
            if name not in names:
                problems.append(f"test {group.get('name')!r} tests unknown alert {name}")
            (fires if t.get("exp_alerts") else quiet).add(name)
    for name in sorted(names):
        if name not in fires:
            problems.append(f"{name}: no test case where it fires")
        if name not in quiet:
            problems.append(f"{name}: no test case where it does not fire")
    if os.path.basename(ALERTS) not in tests.get("rule_files", []):
        problems.append("alerts_test.yaml does not load alerts.yaml")
    return problems


def walk(obj):
    """Every dict inside obj (obj included)."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


def dashboard_queries(d):
    """(where, PromQL) of every panel target and query variable."""
    out = []
    for p in d.get("panels", []):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t.get("expr", "")))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q, re.S)
            out.append((f"variable ${v.get('name')}", m.group(1) if m else q))
    return out


def grafana_to_promql(expr):
    """Grafana's variables replaced by values Prometheus parses."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?", ".*", expr)


def check_dashboard(text, tool):
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"dashboard.json does not parse: {e}"]
    problems = []
    for key in ("uid", "title"):
        if not str(d.get(key, "")).strip():
            problems.append(f"no {key}")
    if "__inputs" in d or "${DS_" in text:
        problems.append("import-only __inputs/${DS_...}: use the ${datasource} variable")
    variables = d.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("name") == "datasource"]
    if not (ds and ds[0].get("type") == "datasource" and ds[0].get("query") == "prometheus"):
        problems.append("no `datasource` variable of type datasource (query: prometheus)")
    ids = []
    for p in d.get("panels", []):
        ids.append(p.get("id"))
        if "gridPos" not in p:
            problems.append(f"panel {p.get('title')!r} has no gridPos")
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            problems.append(f"panel {p.get('title')!r} has no query")
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"panel ids are not unique: {ids}")
    wrong = set()
    for obj in walk(d):
        ref = obj.get("datasource")
        if isinstance(ref, dict) and ref.get("type") != "grafana" and ref != DATASOURCE:
            wrong.add(json.dumps(ref, sort_keys=True))
        elif isinstance(ref, str):
            wrong.add(json.dumps(ref))
    problems += [f"data source {ref} instead of {DATASOURCE}" for ref in sorted(wrong)]
    queries = dashboard_queries(d)
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, (where, expr) in enumerate(queries):
        if not expr.strip():
            problems.append(f"{where}: empty query")
            continue
        rules["groups"][0]["rules"].append({"record": f"dashboard:query{i}", "expr": grafana_to_promql(expr)})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rules, f)
    try:
        failed = run([tool, "check", "rules", f.name])
    finally:
        os.unlink(f.name)
    if failed:
        names = "\n".join(f"  dashboard:query{i} = {where}" for i, (where, _) in enumerate(queries))
        problems += failed + [f"the queries:\n{names}"]
    return problems


def main():
    if sys.argv[1:] == ["--write"]:
        write_copies()
        return 0
    if sys.argv[1:]:
        print(__doc__)
        return 2
    c = Checks()
    c.check(
        "copies of alerts.yaml and dashboard.json are current (else: make monitoring)",
        [
            f"{os.path.relpath(path, ROOT)} is not the copy it should be"
            for path, want in copies()
            if not os.path.exists(path) or read(path, "rb") != want
        ],
    )
    tool = promtool()
    c.check("promtool check rules alerts.yaml", run([tool, "check", "rules", "--lint=all", "--lint-fatal", ALERTS]))
    c.check("promtool test rules alerts_test.yaml", run([tool, "test", "rules", os.path.basename(TESTS)], cwd=MON))
    rules = yaml.safe_load(read(ALERTS))
    c.check("every alert has severity, summary, description and its runbook section", check_alerts(rules))
    c.check(
        "every alert is tested firing and not firing",
        check_tests(rules, yaml.safe_load(read(TESTS))),
    )
    c.check("dashboard.json is provisioning-ready and its queries parse", check_dashboard(read(DASHBOARD), tool))
    print(f"check-monitoring ({tool}): {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
