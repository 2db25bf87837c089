#!/usr/bin/env bash
# Validates the deployment files of deploy/ (issue 16 item 7) with real tools, installed here
# from the package registries on first use and reused afterwards (target/deploy-tools/):
#   - promtool (Debian package `prometheus`, only its files unpacked: no service is installed or
#     started): `check rules` on the alert rules, `test rules` on their unit tests, and a parse
#     of every PromQL expression of the Grafana dashboard;
#   - kubernetes-validate (PyPI; bundles the Kubernetes JSON schemas, no network when run),
#     strict mode: unknown fields are errors;
#   - check-jsonschema (PyPI): the dashboard against deploy/grafana/dashboard.schema.json, and
#     that schema against its metaschema;
#   - yamllint (PyPI) over every YAML file of deploy/;
#   - systemd-analyze verify (Debian package `systemd`) on the unit; its warnings fail the run;
#   - consistency checks of our own (Python): metric names are SPEC §11.3 families, every alert
#     has a severity and a runbook anchor that exists in docs/operations.md, the example config
#     names only documented settings and its cpu_list is inside the unit's CPUAffinity=.
# Every check runs; the script exits 1 if any failed. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tools="${DEPLOY_TOOLS_DIR:-${CARGO_TARGET_DIR:-$root/target}/deploy-tools}"
pip_packages="kubernetes-validate==1.37.0 check-jsonschema==0.39.0 yamllint==1.38.0"
mkdir -p "$tools"
started=$(date +%s)

# --- tools ---------------------------------------------------------------------------------
apt_updated=""
apt_update_once() {
    if [[ -z "$apt_updated" ]]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
}

promtool="$tools/prometheus/usr/bin/promtool"
if [[ ! -x "$promtool" ]]; then
    echo "== installing promtool (Debian package prometheus, unpacked into $tools/prometheus)"
    rm -rf "$tools/deb" "$tools/prometheus"
    mkdir -p "$tools/deb"
    # `apt-get download` needs the package lists; they are fetched only when missing or stale.
    if ! (cd "$tools/deb" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null 2>&1); then
        apt_update_once
        (cd "$tools/deb" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null)
    fi
    dpkg-deb -x "$tools"/deb/prometheus_*.deb "$tools/prometheus.new"
    # Only promtool is needed; the server binary and web assets are dropped.
    mkdir -p "$tools/prometheus/usr/bin"
    mv "$tools/prometheus.new/usr/bin/promtool" "$promtool"
    rm -rf "$tools/prometheus.new" "$tools/deb"
fi

venv="$tools/venv"
if [[ ! -f "$venv/.installed" || "$(cat "$venv/.installed")" != "$pip_packages" ]]; then
    echo "== installing $pip_packages (PyPI, into $venv)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086  # one word per package
    "$venv/bin/pip" install -q --disable-pip-version-check $pip_packages
    echo "$pip_packages" > "$venv/.installed"
fi

if ! command -v systemd-analyze >/dev/null; then
    echo "== installing systemd-analyze (Debian package systemd)"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

echo "== tools: $("$promtool" --version 2>&1 | head -1); kubernetes-validate $("$venv/bin/kubernetes-validate" --version);" \
    "$("$venv/bin/check-jsonschema" --version); $("$venv/bin/yamllint" --version); $(systemd-analyze --version | head -1)"

# --- checks --------------------------------------------------------------------------------
failed=()
check() {
    local name="$1"
    shift
    echo "== $name"
    if ! "$@"; then
        echo "FAILED: $name"
        failed+=("$name")
    fi
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mapfile -t yaml_files < <(find deploy -name '*.yml' -o -name '*.yaml' | sort)
check "yamllint deploy/" "$venv/bin/yamllint" --strict -d \
    '{extends: default, rules: {line-length: {max: 160}, document-start: disable, truthy: {check-keys: false}}}' \
    "${yaml_files[@]}"

check "kubernetes-validate --strict deploy/kubernetes" \
    "$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml

check "promtool check rules" "$promtool" check rules deploy/prometheus/ledger-alerts.yml
check "promtool test rules" "$promtool" test rules deploy/prometheus/ledger-alerts.test.yml

# The dashboard's queries, parsed by promtool as recording rules (syntax and functions).
dashboard_queries() {
    "$venv/bin/python" - "$work/dashboard-rules.yml" <<'PY' || return 1
import json, sys
dash = json.load(open("deploy/grafana/ledger-dashboard.json"))
rules = [{"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": t["expr"]}
         for p in dash["panels"] for t in p.get("targets", [])]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PY
    "$promtool" check rules "$work/dashboard-rules.yml"
}
check "promtool parses the dashboard's queries" dashboard_queries

check "dashboard schema against its metaschema" \
    "$venv/bin/check-jsonschema" --check-metaschema deploy/grafana/dashboard.schema.json
check "dashboard against deploy/grafana/dashboard.schema.json" \
    "$venv/bin/check-jsonschema" --schemafile deploy/grafana/dashboard.schema.json deploy/grafana/ledger-dashboard.json

# systemd-analyze verify wants ExecStart's binary to exist: verify a copy that points it at a
# stand-in. It reports unknown keys and bad values as warnings with exit 0, so any output fails.
verify_unit() {
    local unit="$work/ledger.service" stub="$work/ledger-server" out
    printf '#!/bin/sh\n' > "$stub"
    chmod +x "$stub"
    sed "s#/usr/local/bin/ledger-server#$stub#" deploy/systemd/ledger.service > "$unit"
    out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; return 1; }
    [[ -z "$out" ]] || { echo "$out"; return 1; }
}
check "systemd-analyze verify deploy/systemd/ledger.service" verify_unit

consistency() {
    "$venv/bin/python" - <<'PY'
import json, re, sys, tomllib, yaml

errors = []
# SPEC §11.3 metric families (the contract of GET /metrics), plus Prometheus' own series.
families = set("""
raft_term raft_commit_index raft_apply_index raft_leader raft_replication_lag raft_proposals_total
raft_proposals_pending raft_leader_changes_total chain_height chain_tip_age_seconds blocks_per_second
group_height state_tree_keys state_root_computation_duration_seconds state_nodes_hashed_per_block
merkle_proof_generation_seconds batch_size batch_wait_ms eager_commits_total timeout_commits_total
size_commits_total requests_total request_latency_seconds request_latency_p50 request_latency_p99
request_latency_p999 read_latency_ms write_latency_ms write_raft_latency_ms reads_per_second
writes_per_second vault_health vault_health_ratio state_root_divergence_total determinism_bug_total
vault_recovery_attempts_total vault_recovery_success_total vault_recovery_exhausted
idempotency_cache_hits_total idempotency_cache_misses_total idempotency_cache_evictions_total
idempotency_cache_size snapshots_created_total snapshot_size_bytes snapshot_create_seconds
snapshot_restore_seconds serialization_decode_seconds serialization_encode_seconds serialization_bytes
core_queue_depth core_busy_ratio core_groups active_connections rate_limit_exceeded_total
gc_cycles_total gc_expired_total disk_usage_ratio storage_bytes learner_refresh_total
learner_cache_stale_total
""".split()) | {"up", "ALERTS"}
promql = set("""by without on ignoring group_left group_right bool and or unless offset sum min max avg
count stddev stdvar topk bottomk quantile count_values vector histogram_quantile rate increase
irate le""".split())

def metric_names(expr):
    # Drop label matchers, strings, ranges and grouping label lists, then keep the identifiers
    # that are neither keywords nor function calls.
    expr = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for w in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr):
        if w in promql:
            continue
        names.add(w if w in families else re.sub(r"_(bucket|sum|count)$", "", w))
    return names

def check_expr(where, expr):
    for name in metric_names(expr):
        if name not in families:
            errors.append(f"{where}: `{name}` is not a SPEC §11.3 metric family")

doc = open("docs/operations.md").read()
def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")
anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", doc, re.M)}

rules = yaml.safe_load(open("deploy/prometheus/ledger-alerts.yml"))
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert", rule.get("record"))
        check_expr(f"ledger-alerts.yml {name}", rule["expr"])
        if "alert" in rule:
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                errors.append(f"ledger-alerts.yml {name}: severity must be warning or critical")
            url = rule.get("annotations", {}).get("runbook_url", "")
            anchor = url.partition("#")[2]
            if not url.startswith("docs/operations.md#") or anchor not in anchors:
                errors.append(f"ledger-alerts.yml {name}: runbook_url {url!r} is not a heading of docs/operations.md")

dash = json.load(open("deploy/grafana/ledger-dashboard.json"))
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    errors.append("ledger-dashboard.json: panel ids are not unique")
for p in dash["panels"]:
    for t in p.get("targets", []):
        check_expr(f"ledger-dashboard.json panel {p['id']} ({p['title']})", t["expr"])

# The example config: only settings of the Configuration table; cpu_list inside CPUAffinity=.
config = tomllib.load(open("deploy/systemd/inferadb-ledger.toml", "rb"))
section = doc.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
settings, missing = section.split("### Not implemented yet", 1)
def first_cells(text):
    return {k for cell in re.findall(r"^\| ([^|]+) \|", text, re.M) for k in re.findall(r"`([a-z_]+)`", cell)}
for key in config:
    if key not in first_cells(settings) or key in first_cells(missing):
        errors.append(f"inferadb-ledger.toml: `{key}` is not an implemented setting of docs/operations.md")
def cpus(text):
    out = set()
    for part in text.replace(" ", ",").split(","):
        if part:
            lo, _, hi = part.partition("-")
            out |= set(range(int(lo), int(hi or lo) + 1))
    return out
unit = open("deploy/systemd/ledger.service").read()
affinity = re.search(r"^CPUAffinity=(.+)$", unit, re.M)
if "cpu_list" in config and affinity and not cpus(config["cpu_list"]) <= cpus(affinity.group(1)):
    errors.append("inferadb-ledger.toml: cpu_list is not inside the unit's CPUAffinity=")
if config.get("data_dir") != "/var/lib/ledger" or "StateDirectory=ledger" not in unit:
    errors.append("inferadb-ledger.toml: data_dir must be the unit's StateDirectory (/var/lib/ledger)")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}
check "consistency: metric names, runbook anchors, example config" consistency

echo "== validate-deploy: $(( $(date +%s) - started )) s"
if (( ${#failed[@]} )); then
    echo "validate-deploy: ${#failed[@]} check(s) failed: ${failed[*]}"
    exit 1
fi
echo "validate-deploy: all checks passed"
