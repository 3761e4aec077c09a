#!/usr/bin/env bash
# Pod created -> Ready on the two-node cluster of scripts/cluster.sh: PODS
# pods with a hostPort each, created at once (half on each node), through
# the whole chain ending in portmap-lite, then in the reference portmap, on
# the same cluster, rounds interleaved. Each pod's time runs from the
# moment its creation was sent to the moment a watch on the API server
# sees it Ready. Prints p50 and p99 and writes bench/RESULTS-k8s.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/e2e-lib.sh
. scripts/cluster.sh

SB_BIN="${SB_BIN:-$(pwd)/bin}"
PODS=${BENCH_K8S_PODS:-30}
ROUNDS=${BENCH_K8S_ROUNDS:-3}
OUT=bench/RESULTS-k8s.md

cluster_up
T=$CL_DIR
k() { cl_kubectl "$@"; }
cl_busybox_image "$T/busybox.tar"
cl_podman_clean
for node in "${CL_NODES[@]}"; do
  cl_import "$node" "$T/busybox.tar"
  # Provisioned by hand here: the bench is about pods, not the DaemonSet.
  cp "$SB_BIN"/* "$T/$node/mnt/opt/cni/bin/"
  cl_kube_proxy_start "$node" iptables "$CL_POD_CIDR"
done

pods() { # pods VARIANT: PODS pod manifests, alternating between the nodes
  local i
  for ((i = 0; i < PODS; i++)); do
    echo ---
    cl_hostport_pod "$1-$i" "${CL_NODES[$((i % 2))]}" $((9000 + i)) "bench: $1"
  done
}

# round VARIANT: one round; appends "VARIANT SECONDS" per pod to $T/times.
round() {
  local variant=$1 node watch start name ready t seen
  for node in "${CL_NODES[@]}"; do cl_conflist "$node" "$variant" >"$T/$node/mnt/etc/cni/net.d/10-lan.conflist"; done
  for node in "${CL_NODES[@]}"; do wait_for 120 "$node to be Ready" cl_node_ready "$node"; done
  : >"$T/watch"
  k get pods -l "bench=$variant" --watch \
    -o 'jsonpath={.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' 2>/dev/null |
    while read -r name ready; do echo "$EPOCHREALTIME $name ${ready:-none}"; done >>"$T/watch" &
  watch=$!
  sleep 1 # the watch is established
  start=$EPOCHREALTIME
  pods "$variant" | k apply -f - >/dev/null
  wait_for 300 "$PODS $variant pods to be Ready" sh -c "[ \$(awk '\$3==\"True\"{print \$2}' '$T/watch' | sort -u | wc -l) -ge $PODS ]"
  kill "$watch" 2>/dev/null || true
  wait "$watch" 2>/dev/null || true
  awk -v s="$start" -v v="$variant" '$3=="True" && !seen[$2]++ {printf "%s %.3f\n", v, $1 - s}' "$T/watch" >>"$T/times"
  k delete pod -l "bench=$variant" --wait=true --timeout 300s >/dev/null
}

: >"$T/times"
for ((r = 1; r <= ROUNDS; r++)); do
  echo "bench-k8s: round $r of $ROUNDS" >&2
  round portmap-lite
  round portmap
done

pct() { # pct VARIANT P: the Pth percentile (nearest rank) of VARIANT's times
  awk -v v="$1" '$1==v{print $2}' "$T/times" | sort -n | awk -v p="$2" '{a[NR]=$1} END{i=int((p/100)*NR+0.999999); if(i<1)i=1; print a[i]}'
}
ratio() { awk -v a="$(pct portmap-lite "$1")" -v b="$(pct portmap "$1")" 'BEGIN{printf "%.2f", a / b}'; }
{
  echo "# Pod created -> Ready on a two-node cluster ($(date -u +%Y-%m-%d))"
  echo
  echo "Kubernetes $("$CL_BIN/kubelet" --version | awk '{print $2}'), containerd $("$CL_BIN/containerd" --version | awk '{print $3}'),"
  echo "kube-proxy in iptables mode; $PODS pods with a hostPort each created at once, half on each node, $ROUNDS rounds"
  echo "interleaved; the whole chain (macvlan + host-local -> macvlan-host-route -> the port mapper). Seconds from"
  echo "the creation being sent to a watch seeing the pod Ready (\`make bench-k8s\`, scripts/bench-k8s.sh)."
  echo
  echo "| port mapper | p50 (s) | p99 (s) | pods |"
  echo "|---|---|---|---|"
  for v in portmap-lite portmap; do
    echo "| $v | $(pct "$v" 50) | $(pct "$v" 99) | $(awk -v v="$v" '$1==v' "$T/times" | wc -l) |"
  done
  echo
  echo "portmap-lite / portmap: p50 $(ratio 50)x, p99 $(ratio 99)x."
} | tee "$OUT"
