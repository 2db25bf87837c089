#!/usr/bin/env bash
# Ledger against etcd 3.4, side by side in one run (issue 15 items 2 and 3). Not part of CI: it
# installs Debian packages, builds a separate tool and runs for several minutes; its figures only
# mean something on a quiet machine.
#
#  1. Installs etcd-server, etcd-client, protobuf-compiler and libprotobuf-dev with apt-get, only
#     those that are missing (etcd's packaged service is never used; protoc builds etcd-client).
#  2. Builds tools/etcd-loadgen (its own workspace, not the project's) into a cache target
#     directory, and release ledger-server, ledger-loadgen and ledger-bench.
#  3. Measures the fsync cost of the run's directory and a loopback round trip
#     (`ledger-bench --fsync-dir`), the inputs of the latency budget.
#  4. For 1 node, then 3 nodes: etcd with that many members, then Ledger with that many nodes
#     (fresh data directories, fsync on, default settings), each driven with single-key 100-byte
#     writes in a closed loop at 1, 16 and 256 in flight, with the same connections × pipeline for
#     both systems (etcd: tools/etcd-loadgen; Ledger: ledger-loadgen --batch-items 1
#     --mix write=100 --scope-per-connection: each connection writes one of the namespaces and
#     names it in its Hello, so a node serves it on the core owning that namespace, D53).
#     Connections are spread over all the nodes.
#  5. Prints one line per run, then a table: ops/s and p99 of both, Ledger/etcd throughput, etcd/
#     Ledger p99, and issue 15's targets marked met or missed (16 in flight: ≥ 2× etcd's ops/s;
#     256 in flight: ≥ 3× and p99 ≤ etcd's / 3; 1 in flight: Ledger's p50 within the budget of one
#     fsync + 0.2 ms on one node, one fsync + one loopback round trip + 0.3 ms on three).
#
# Every process it starts is stopped by PID on exit, and its temporary directory is removed.
#
# Env knobs:
#   DURATION=10s      measured window of each run (WARMUP=2s runs before it)
#   ONLY=1|3          run one topology only
#   LEVELS="1x1 4x4 4x64"  connections x pipeline of each in-flight level (the targets apply to
#                     1, 16 and 256 in flight)
#   KEYS=100000       key space (Ledger preloads it into each of its NAMESPACES=2 namespaces)
#   TMPBASE=/tmp      where the data directories go: a real disk, not tmpfs (/tmp is on the root
#                     ext4 on the project's machines)
#   BUDGET_FSYNC=append|overwrite  which fsync figure the budget uses (default append: a 4 KiB
#                     append + fdatasync; overwrite is the floor of a pre-allocated log)
#   BASE_PORT=25100   first port tried for etcd and Ledger (busy ports are skipped)
#   LEDGER_FLAGS="…"  extra ledger-server flags for every node
#   CLUSTER_CORES=1   --cores of each Ledger node in the three-node runs (D54): three nodes share
#                     this machine's two CPUs, and a node runs one executor per core it is given,
#                     so the default 2 would put six executors and six log threads on two CPUs.
#                     Empty: each node's default (one core per CPU). etcd is left unrestricted.
#   LOADGEN_FLAGS="…" ledger-loadgen's own flags (default --scope-per-connection; empty: every
#                     worker spreads its writes over all namespaces, the shape before D53)
#   ETCD_LOADGEN_TARGET=DIR  cargo target directory of etcd-loadgen
#                     (default ${XDG_CACHE_HOME:-~/.cache}/ledger-etcd-loadgen-target)
#
# usage: scripts/bench-vs-etcd.sh            e.g. DURATION=30s ONLY=3 scripts/bench-vs-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
ONLY="${ONLY:-}"
LEVELS="${LEVELS:-1x1 4x4 4x64}"
KEYS="${KEYS:-100000}"
NAMESPACES="${NAMESPACES:-2}"
TMPBASE="${TMPBASE:-/tmp}"
BUDGET_FSYNC="${BUDGET_FSYNC:-append}"
NEXT_PORT="${BASE_PORT:-25100}"
LEDGER_FLAGS="${LEDGER_FLAGS:-}"
CLUSTER_CORES="${CLUSTER_CORES-1}"
LOADGEN_FLAGS="${LOADGEN_FLAGS---scope-per-connection}"
ETCD_LOADGEN_TARGET="${ETCD_LOADGEN_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/ledger-etcd-loadgen-target}"

say() { echo "# $*" >&2; }
die() { echo "bench-vs-etcd: $*" >&2; exit 1; }

case "$ONLY" in ""|1|3) ;; *) die "ONLY is 1 or 3, not '$ONLY'" ;; esac
case "$BUDGET_FSYNC" in append|overwrite) ;; *) die "BUDGET_FSYNC is append or overwrite" ;; esac
for level in $LEVELS; do
  [[ "$level" =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || die "LEVELS entries are CxP, e.g. 4x64, not '$level'"
done
[[ "$DURATION" =~ ^[1-9][0-9]*(ms|s|m|h)?$ ]] || die "DURATION is e.g. 10s, 500ms or 2m, not '$DURATION'"
[[ "$WARMUP" =~ ^[0-9]+(ms|s|m|h)?$ ]] || die "WARMUP is e.g. 2s, not '$WARMUP'"
[[ -z "$CLUSTER_CORES" || "$CLUSTER_CORES" =~ ^[1-9][0-9]*$ ]] || die "CLUSTER_CORES is empty or a positive integer"
[[ "$KEYS" =~ ^[1-9][0-9]*$ && "$NAMESPACES" =~ ^[1-9][0-9]*$ ]] || die "KEYS and NAMESPACES are positive integers"
case "$(stat -f -c %T "$TMPBASE" 2>/dev/null || echo missing)" in
  tmpfs|ramfs) die "TMPBASE=$TMPBASE is in memory: fsync costs nothing there; point it at a real disk" ;;
  missing) die "TMPBASE=$TMPBASE does not exist" ;;
esac

# ---- 1. packages, only the missing ones ----
missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[[ -f /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
if ((${#missing[@]})); then
  SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO=sudo
  say "installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
export ETCDCTL_API=3

# ---- 2. builds ----
say "building tools/etcd-loadgen (the first time takes a few minutes)"
(cd tools/etcd-loadgen && CARGO_TARGET_DIR="$ETCD_LOADGEN_TARGET" cargo build --release --locked -q) \
  || die "building tools/etcd-loadgen failed (needs protoc and crates.io)"
ETCD_LOADGEN="$ETCD_LOADGEN_TARGET/release/etcd-loadgen"
say "building release ledger-server, ledger-loadgen, ledger-bench"
cargo build --release -q -p ledger-server -p ledger-loadgen -p ledger-bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

# ---- processes and cleanup ----
WORK="$(mktemp -d "$TMPBASE/bench-vs-etcd.XXXXXX")"
SERVERS=()   # PIDs of the running cluster's members
CLIENT=""    # PID of the running load generator
stop_servers() {
  local p
  for p in "${SERVERS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVERS[@]}"; do wait "$p" 2>/dev/null || true; done
  SERVERS=()
}
cleanup() {
  [[ -n "$CLIENT" ]] && { kill "$CLIENT" 2>/dev/null || true; wait "$CLIENT" 2>/dev/null || true; }
  stop_servers
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Sets variable $1 to the next port from NEXT_PORT on which nothing listens.
take_port() {
  while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

# CPU time (clock ticks, user + system) the cluster's members have used so far.
HZ="$(getconf CLK_TCK)"
server_ticks() {
  local p t=0
  for p in "${SERVERS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}

# Fails if a member of the running cluster has exited.
all_alive() {
  local p
  for p in "${SERVERS[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
}

# Prints the last lines of the logs of members that are no longer running; fails if any died.
check_alive() {
  local i dead=0
  for i in "${!SERVERS[@]}"; do
    if ! kill -0 "${SERVERS[$i]}" 2>/dev/null; then
      dead=1; echo "  member $i (pid ${SERVERS[$i]}) died; its log ends with:" >&2
      tail -n 5 "$CLUSTER_DIR/m$i.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    fi
  done
  return "$dead"
}

# ---- 3. the budget's inputs ----
echo "== machine: $(nproc) cpu(s), $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), kernel $(uname -r);" \
  "data in $WORK ($(findmnt -no SOURCE,FSTYPE -T "$WORK" 2>/dev/null || stat -f -c %T "$WORK")); $(etcd --version | awk '/etcd Version/{print "etcd " $3}'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== ledger-bench --fsync-dir $WORK"
BENCH_OUT="$("$BIN/ledger-bench" --fsync-dir "$WORK")" || die "ledger-bench --fsync-dir failed"
echo "$BENCH_OUT"
# `p50` of a ledger-bench line, in ms (the line prints 812ns, 4.31µs, 1.20ms or 1.20s).
bench_p50_ms() {
  echo "$BENCH_OUT" | awk -v name="$1" '$1 == name {
      v = $5
      if (sub(/ns$/, "", v)) print v / 1e6; else if (sub(/µs$/, "", v)) print v / 1e3;
      else if (sub(/ms$/, "", v)) print v + 0; else if (sub(/s$/, "", v)) print v * 1e3 }'
}
FSYNC_MS="$(bench_p50_ms "fsync/${BUDGET_FSYNC}_4k")"
RTT_MS="$(bench_p50_ms net/loopback_rtt_64b)"
[[ -n "$FSYNC_MS" && -n "$RTT_MS" ]] || die "cannot read the fsync and round-trip figures of ledger-bench"

# ---- runs ----
# Results by "system:nodes:in_flight": ops/s, p50 ms, p99 ms ("" when the run failed).
declare -A OPS P50 P99

# Prints one run's line and stores its figures. Arguments: system nodes level ops p50_us p99_us
# p999_us errors cpu_cores.
record() {
  local system="$1" nodes="$2" level="$3" ops="$4" p50="$5" p99="$6" p999="$7" errors="$8" cpu="$9"
  local flight=$(( ${level%x*} * ${level#*x} ))
  local key="$system:$nodes:$flight"
  OPS[$key]="$ops"; P50[$key]="$(awk -v u="$p50" 'BEGIN{print u / 1000}')"; P99[$key]="$(awk -v u="$p99" 'BEGIN{print u / 1000}')"
  awk -v s="$system" -v n="$nodes" -v f="$flight" -v l="$level" -v o="$ops" -v a="$p50" -v b="$p99" -v c="$p999" \
      -v e="$errors" -v cpu="$cpu" 'BEGIN { printf "run %-6s %d node(s)  %3d in flight (%s): %8.0f ops/s  p50 %7.2f ms  p99 %7.2f ms  p99.9 %7.2f ms  errors %s  servers %.2f cores\n", s, n, f, l, o, a / 1000, b / 1000, c / 1000, e, cpu }'
}
failed() { # system nodes level why
  printf 'run %-6s %d node(s)  %3d in flight (%s): FAILED: %s\n' "$1" "$2" "$(( ${3%x*} * ${3#*x} ))" "$3" "$4"
}

# What the load generator said last on stderr, without clap's usage hints.
client_error() {
  grep -vE '^[[:space:]]*$|^For more information|^Usage:' "$WORK/client.err" | tail -n 2 | tr '\n' ' '
}

# Runs "$@" (a load generator) in the background, so that a signal can stop it by PID; its stdout
# goes to $WORK/client.out, its stderr to $WORK/client.err. Sets CPU_CORES to the cores the
# members used meanwhile (preload and warm-up included).
drive() {
  local t0 s0 status=0
  t0="$(date +%s.%N)"; s0="$(server_ticks)"
  "$@" >"$WORK/client.out" 2>"$WORK/client.err" &
  CLIENT=$!
  wait "$CLIENT" || status=$?
  CLIENT=""
  CPU_CORES="$(awk -v a="$s0" -v b="$(server_ticks)" -v t0="$t0" -v t1="$(date +%s.%N)" -v hz="$HZ" 'BEGIN{printf "%.2f", (b - a) / hz / (t1 - t0)}')"
  return "$status"
}

# The word after label $2 in line $1 (etcd-loadgen prints `label value` pairs).
after() { echo "$1" | awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }'; }

# Polls `$@` every 0.1 s up to TRIES times while every server is alive; fails otherwise.
wait_ready() { # tries command...
  local tries="$1"; shift
  for _ in $(seq "$tries"); do
    if "$@"; then return 0; fi
    all_alive || return 1
    sleep 0.1
  done
  return 1
}

# A cluster that never became ready: every level of this run fails with `why`.
give_up() { # system nodes why
  check_alive || true
  for level in $LEVELS; do failed "$1" "$2" "$level" "$3"; done
  stop_servers; rm -rf "$CLUSTER_DIR"
}

etcd_healthy() { etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; }

# Every node listens and the cluster answers a registry read.
ledger_ready() {
  [[ "$(grep -l "listening on" "$CLUSTER_DIR"/m*.log 2>/dev/null | wc -l)" == "$nodes" ]] \
    && "$BIN/ledger" --addr "${addrs[0]}" namespace list >/dev/null 2>&1
}

run_etcd() { # nodes
  local nodes="$1" i cluster="" endpoints="" ports=() level out
  CLUSTER_DIR="$WORK/etcd-$nodes"; mkdir -p "$CLUSTER_DIR"
  for i in $(seq 0 $((nodes - 1))); do
    local client peer; take_port client; take_port peer; ports+=("$client:$peer")
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$peer"; endpoints+="${endpoints:+,}http://127.0.0.1:$client"
  done
  for i in $(seq 0 $((nodes - 1))); do
    local client="${ports[$i]%:*}" peer="${ports[$i]#*:}"
    etcd --name "m$i" --data-dir "$CLUSTER_DIR/m$i" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-vs-etcd-$$-$nodes" \
      --logger zap --log-outputs "$CLUSTER_DIR/m$i.log" --log-level warn >/dev/null 2>&1 &
    SERVERS+=($!)
  done
  if ! wait_ready 300 etcd_healthy; then
    give_up etcd "$nodes" "the cluster did not become healthy"; return 0
  fi
  for level in $LEVELS; do
    if drive "$ETCD_LOADGEN" --endpoints "$endpoints" --connections "${level%x*}" --pipeline "${level#*x}" \
        --duration "$DURATION" --warmup "$WARMUP" --value-size 100 --key-space "$KEYS"; then
      # put 4x16 100B 10s  ops N  ops/s X  p50_us A  p99_us B  p999_us C  max_us D  errors E
      out="$(cat "$WORK/client.out")"
      record etcd "$nodes" "$level" "$(after "$out" ops/s)" "$(after "$out" p50_us)" "$(after "$out" p99_us)" \
        "$(after "$out" p999_us)" "$(after "$out" errors)" "$CPU_CORES"
    else
      failed etcd "$nodes" "$level" "$(client_error)"
    fi
    check_alive || true
  done
  stop_servers; rm -rf "$CLUSTER_DIR"
}

run_ledger() { # nodes
  local nodes="$1" i peers="" addrs=() level
  CLUSTER_DIR="$WORK/ledger-$nodes"; mkdir -p "$CLUSTER_DIR"
  for i in $(seq 0 $((nodes - 1))); do
    local port; take_port port; addrs+=("127.0.0.1:$port"); peers+="${peers:+,}127.0.0.1:$port"
  done
  for i in $(seq 0 $((nodes - 1))); do
    local cluster_flags=()
    if ((nodes > 1)); then
      cluster_flags=(--bootstrap-expect "$nodes" --peers "$peers" --bootstrap-poll-secs 1 --cpu-pinning false)
      if [[ -n "$CLUSTER_CORES" ]]; then cluster_flags+=(--cores "$CLUSTER_CORES"); fi
    fi
    # shellcheck disable=SC2086 # LEDGER_FLAGS is a list of flags
    "$BIN/ledger-server" --data-dir "$CLUSTER_DIR/n$i" --listen-addr "${addrs[$i]}" --metrics-addr off --rate-limit-rps 0 \
      "${cluster_flags[@]}" $LEDGER_FLAGS >"$CLUSTER_DIR/m$i.log" 2>&1 &
    SERVERS+=($!)
  done
  if ! wait_ready 600 ledger_ready; then
    give_up ledger "$nodes" "the cluster did not start serving"; return 0
  fi
  for level in $LEVELS; do
    if drive "$BIN/ledger-loadgen" --addr "$peers" --namespaces "$NAMESPACES" --key-space "$KEYS" \
        --value-size 100 --connections "${level%x*}" --pipeline "${level#*x}" --batch-items 1 --mix write=100 \
        --duration "$DURATION" --warmup "$WARMUP" --report text $LOADGEN_FLAGS; then
      # op count ops/s p50 p95 p99 p99.9 max entities/s errors (latencies in µs)
      local row ops p50 p99 p999 errors
      row="$(awk '$1 == "write"' "$WORK/client.out")"
      if [[ -n "$row" ]]; then
        read -r ops p50 p99 p999 errors <<<"$(echo "$row" | awk '{print $3, $4, $6, $7, $10}')"
        record ledger "$nodes" "$level" "$ops" "$p50" "$p99" "$p999" "$errors" "$CPU_CORES"
      else
        failed ledger "$nodes" "$level" "no write row in the report"
      fi
    else
      failed ledger "$nodes" "$level" "$(client_error)"
    fi
    check_alive || true
  done
  stop_servers; rm -rf "$CLUSTER_DIR"
}

TOPOLOGIES=(1 3)
[[ -n "$ONLY" ]] && TOPOLOGIES=("$ONLY")
for nodes in "${TOPOLOGIES[@]}"; do
  shape="default cores"
  ((nodes > 1)) && [[ -n "$CLUSTER_CORES" ]] && shape="--cores $CLUSTER_CORES per node"
  echo "== $nodes node(s): etcd, then Ledger ($shape); $DURATION per run after $WARMUP of warm-up"
  run_etcd "$nodes"
  run_ledger "$nodes"
done

# ---- 5. the table ----
echo
echo "== Ledger against etcd $(etcd --version | awk '/etcd Version/{print $3}'): single-key 100-byte writes, closed loop, $DURATION per run"
printf '   budget inputs on %s: fsync (%s 4 KiB + fdatasync) p50 %.3f ms, loopback round trip p50 %.3f ms\n' \
  "$TMPBASE" "$BUDGET_FSYNC" "$FSYNC_MS" "$RTT_MS"
printf '%-8s %-14s %10s %9s %10s %9s %9s %9s  %s\n' topology "in flight" "etcd op/s" "etcd p99" "Ledger/s" "Ledg p99" "ops L/E" "p99 E/L" target
for nodes in "${TOPOLOGIES[@]}"; do
  for level in $LEVELS; do
    flight=$(( ${level%x*} * ${level#*x} ))
    e="etcd:$nodes:$flight"; l="ledger:$nodes:$flight"
    awk -v n="$nodes" -v f="$flight" -v lv="$level" -v eo="${OPS[$e]:-}" -v e99="${P99[$e]:-}" \
        -v lo="${OPS[$l]:-}" -v l50="${P50[$l]:-}" -v l99="${P99[$l]:-}" -v fs="$FSYNC_MS" -v rtt="$RTT_MS" '
      function num(x, fmt) { return x == "" ? "-" : sprintf(fmt, x) }
      function verdict(ok) { return ok ? "met" : "missed" }
      BEGIN {
        both = (eo != "" && lo != "" && eo > 0 && l99 > 0)
        ratio = both ? lo / eo : ""; p99r = both ? e99 / l99 : ""
        if (f == 1) {
          budget = (n == 1) ? fs + 0.2 : fs + rtt + 0.3
          how = (n == 1) ? sprintf("fsync %.3f + 0.2", fs) : sprintf("fsync %.3f + rtt %.3f + 0.3", fs, rtt)
          target = (l50 == "") ? "budget: n/a (run failed)" : \
            sprintf("Ledger p50 %.3f ms <= budget %.3f ms (%s): %s", l50, budget, how, verdict(l50 <= budget))
        } else if (f == 16) {
          target = both ? "ops >= 2x etcd: " verdict(ratio >= 2) : "ops >= 2x etcd: n/a (run failed)"
        } else if (f == 256) {
          target = both ? "ops >= 3x etcd: " verdict(ratio >= 3) "; p99 <= etcd/3: " verdict(p99r >= 3) \
                        : "ops >= 3x, p99 <= etcd/3: n/a (run failed)"
        } else target = "-"
        printf "%-8s %-14s %10s %9s %10s %9s %9s %9s  %s\n", n " node" (n > 1 ? "s" : ""), f " (" lv ")", \
          num(eo, "%.0f"), num(e99, "%.2fms"), num(lo, "%.0f"), num(l99, "%.2fms"), \
          num(ratio, "%.2fx"), num(p99r, "%.2fx"), target
      }'
  done
done
