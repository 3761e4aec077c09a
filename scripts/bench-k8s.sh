#!/usr/bin/env bash
# Pod created -> Ready on the two-node cluster of scripts/cluster.sh, the
# plugins installed as users install them (deploy/daemonset.yaml, the
# reference plugins by node provisioning): PODS pods with a hostPort each,
# created at once (half on each node), through the whole chain ending in
# portmap-lite, in the reference portmap, and in portmap-lite with IPv4 alone
# (portmap-lite-ipv4: what IPv6, whose DAD macvlan waits for, costs a pod's
# start; see cl_conflist); ROUNDS rounds, the variants in a random order in
# each. Each pod's time runs from its creation to its Ready
# condition, both as a watch on the API server sees them (creationTimestamp
# and the condition's lastTransitionTime have whole seconds only; the
# watch's first sight of a pod is within a second after its
# creationTimestamp, and is checked to be). Prints p50, p90 and p99 of all
# pods and each percentile's spread over the rounds, and writes
# bench/RESULTS-k8s.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/e2e-lib.sh
. scripts/cluster.sh

SB_BIN="${SB_BIN:-$(pwd)/bin}"
PODS=${BENCH_K8S_PODS:-30}
ROUNDS=${BENCH_K8S_ROUNDS:-5}
VARIANTS=(portmap-lite portmap portmap-lite-ipv4)
OUT=bench/RESULTS-k8s.md

cluster_up
T=$CL_DIR
k() { cl_kubectl "$@"; }
cl_busybox_image "$T/busybox.tar"
cl_plugins_image bench "$T/plugins.tar"
cl_podman_clean
for node in "${CL_NODES[@]}"; do
  cl_import "$node" "$T/busybox.tar"
  cl_import "$node" "$T/plugins.tar"
  cl_provision_reference_plugins "$node" "$SB_BIN"
  cl_kube_proxy_start "$node" iptables "$CL_POD_CIDR,$CL_POD_CIDR6"
  cl_conflist "$node" portmap-lite >"$T/$node-portmap-lite.conflist"
  cl_conflist "$node" portmap >"$T/$node-portmap.conflist"
  cl_conflist "$node" portmap-lite ipv4 >"$T/$node-portmap-lite-ipv4.conflist"
done
k -n kube-system create configmap cnichain-conflist $(for f in "$T"/node-*.conflist; do echo --from-file "$f"; done) >/dev/null

# use VARIANT: the DaemonSet installs VARIANT's conflist on every node (a
# rolling update), and each node's containerd has it.
use() {
  local node
  cl_daemonset bench "\$(NODE_NAME)-$1.conflist" | k apply -f - >/dev/null
  cl_rolled_out 300 || return 1
  for node in "${CL_NODES[@]}"; do
    wait_for 60 "$node's conflist to be $1's" cmp -s "$T/$node/mnt/etc/cni/net.d/30-lan.conflist" "$T/$node-$1.conflist" || return 1
    wait_for 120 "$node to be Ready" cl_node_ready "$node" || return 1
  done
}

pods() { # pods VARIANT: PODS pod manifests, alternating between the nodes
  local i
  for ((i = 0; i < PODS; i++)); do
    echo ---
    cl_hostport_pod "$1-$i" "${CL_NODES[$((i % 2))]}" $((9000 + i)) "bench: $1"
  done
}

# round R VARIANT: PODS pods of VARIANT created at once; appends "R VARIANT
# SECONDS" per pod to $T/times.
round() {
  local r=$1 variant=$2 watch
  use "$variant"
  : >"$T/watch"
  # Each line: when the watch saw it, the pod, its creationTimestamp, Ready
  # (stamped as read, with no process forked per line: a backlog would
  # delay the stamps). Killing the loop ends kubectl too, at its next
  # write (the pods' deletion); neither holds the cluster lock. kubectl's
  # requests are logged (-v 6), to see its watch established.
  k get pods -l "bench=$variant" --watch -v 6 2>"$T/watch.log" {CL_LOCK}>&- \
    -o 'jsonpath={.metadata.name} {.metadata.creationTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' |
    while read -r line; do echo "$EPOCHREALTIME $line"; done {CL_LOCK}>&- >>"$T/watch" &
  watch=$!
  wait_for 60 "kubectl's watch of $variant's pods to be established" matches 'watch=true.*200 OK' cat "$T/watch.log"
  pods "$variant" | k apply -f - >/dev/null
  wait_for 600 "$PODS $variant pods to be Ready" all_ready
  kill "$watch"
  wait "$watch" || true # it was killed: its status says only that
  # From the first sight of each pod to the first sight of it Ready; the
  # first sight is checked to lie less than 2 s after its creationTimestamp
  # (whole seconds: up to 1 s before the creation itself).
  awk '{cmd = "date -d " $3 " +%s"; cmd | getline s; close(cmd); $3 = s; print}' "$T/watch" >"$T/watch.s"
  awk -v r="$r" -v v="$variant" '
    !($2 in first) {first[$2] = $1; created[$2] = $3}
    $4 == "True" && !($2 in ready) {ready[$2] = $1}
    END {
      for (p in ready) {
        lag = first[p] - created[p]
        if (lag < 0 || lag >= 2) { printf "bench-k8s: %s first seen %.3f s after its creationTimestamp\n", p, lag > "/dev/stderr"; exit 1 }
        printf "%s %s %.3f\n", r, v, ready[p] - first[p]
      }
    }' "$T/watch.s" >>"$T/times"
  k delete pod -l "bench=$variant" --wait=true --timeout 300s >/dev/null
}
all_ready() { [ "$(awk '$4 == "True" {print $2}' "$T/watch" | sort -u | wc -l)" -ge "$PODS" ]; }

: >"$T/times"
for ((r = 1; r <= ROUNDS; r++)); do
  order=$(printf '%s\n' "${VARIANTS[@]}" | shuf)
  echo "bench-k8s: round $r of $ROUNDS:" $order >&2
  for v in $order; do round "$r" "$v"; done
done

pct() { # pct P [VARIANT [ROUND]]: the Pth percentile (nearest rank) of those times
  awk -v v="${2:-}" -v r="${3:-}" '(v == "" || $2 == v) && (r == "" || $1 == r) {print $3}' "$T/times" | sort -n |
    awk -v p="$1" '{a[NR] = $1} END {i = int((p / 100) * NR + 0.999999); if (i < 1) i = 1; print a[i]}'
}
spread() { # spread P VARIANT: the lowest and highest of the rounds' Pth percentiles
  local r
  for ((r = 1; r <= ROUNDS; r++)); do pct "$1" "$2" "$r"; done | sort -n | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.1f-%.1f", lo, hi}'
}
ratio() { awk -v a="$(pct "$1" "$2")" -v b="$(pct "$1" "$3")" 'BEGIN {printf "%.2f", a / b}'; }
{
  echo "# Pod created -> Ready on a two-node cluster ($(date -u +%Y-%m-%d))"
  echo
  echo "Kubernetes $("$CL_BIN/kubelet" --version | awk '{print $2}'), containerd $("$CL_BIN/containerd" --version | awk '{print $3}'),"
  echo "dual-stack, kube-proxy in iptables mode, the plugins installed by deploy/daemonset.yaml; $PODS pods with a hostPort"
  echo "each created at once, half on each node, $ROUNDS rounds, the variants in a random order in each; the whole"
  echo "chain (macvlan + host-local -> macvlan-host-route -> the port mapper), dual-stack (macvlan waits for each"
  echo "IPv6 address's DAD); portmap-lite-ipv4 is the same with IPv4 alone. Seconds from each"
  echo "pod's creation to its Ready condition, as a watch on the API server sees them (\`make bench-k8s\`,"
  echo "scripts/bench-k8s.sh); the spread is the lowest and highest of the rounds' own percentiles."
  echo
  echo "| port mapper | p50 (s) | p90 (s) | p99 (s) | p50 spread | p90 spread | p99 spread | pods |"
  echo "|---|---:|---:|---:|---|---|---|---:|"
  for v in "${VARIANTS[@]}"; do
    echo "| $v | $(pct 50 "$v") | $(pct 90 "$v") | $(pct 99 "$v") | $(spread 50 "$v") | $(spread 90 "$v") | $(spread 99 "$v") | $(awk -v v="$v" '$2 == v' "$T/times" | wc -l) |"
  done
  echo
  echo "portmap-lite / portmap: p50 $(ratio 50 portmap-lite portmap)x, p90 $(ratio 90 portmap-lite portmap)x, p99 $(ratio 99 portmap-lite portmap)x."
  echo "portmap-lite dual-stack / IPv4 alone (IPv6 and its DAD wait): p50 $(ratio 50 portmap-lite portmap-lite-ipv4)x, p90 $(ratio 90 portmap-lite portmap-lite-ipv4)x, p99 $(ratio 99 portmap-lite portmap-lite-ipv4)x."
} | tee "$OUT"
