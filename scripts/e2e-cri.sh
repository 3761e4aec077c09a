#!/usr/bin/env bash
# Kubernetes' own runtime path without a cluster: containerd's CRI plugin
# (Debian's containerd 1.6), driven by crictl as a kubelet would drive it,
# runs our conflists: portMappings from the pod's port_mappings, K8S_POD_*
# in CNI_ARGS, its own result cache, DEL when the sandbox goes.
#
# containerd runs inside the sandbox's node namespace with its own root,
# state and socket under the sandbox directory, our build as its CNI
# bin_dir and a conflist directory of this script's. The sandbox image
# (the "pause" container) and the pods' web server are one image built
# here from the static busybox, with no registry.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh containerd runc podman
. scripts/sandbox.sh
. scripts/e2e-lib.sh

# crictl, pinned, built once per machine from the Go module proxy (its
# Kubernetes modules stay out of our go.mod).
CRICTL_VERSION=v1.34.0
tools="${XDG_CACHE_HOME:-$HOME/.cache}/cnichain"
CRICTL="$tools/crictl-$CRICTL_VERSION"
if [ ! -x "$CRICTL" ]; then
  echo "e2e-cri: building crictl $CRICTL_VERSION (once)" >&2
  mkdir -p "$tools/gobin"
  (cd / && GOBIN="$tools/gobin" GOFLAGS=-mod=mod go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION")
  mv "$tools/gobin/crictl" "$CRICTL"
fi

SB_BIN="${SB_BIN:-$(pwd)/bin}"

# libcni's result cache is /var/lib/cni in containerd 1.6 (not
# configurable): remove whatever of it this run adds.
cni_before=$(ls -A /var/lib/cni 2>/dev/null | sort || true)
mkdir -p /var/lib/cni
# containerd 1.6's shims put their sockets under /run/containerd/s whatever
# its state: remove that directory afterwards if this run made it.
[ -d /run/containerd ] && run_containerd_before=1 || run_containerd_before=""
T="" CTRD_PID="" RM_PID=""
cri_down() {
  if [ -n "$CTRD_PID" ]; then
    cri rmp -a -f >/dev/null 2>&1 || true
    containerd_stop
  fi
  [ -n "$RM_PID" ] && kill "$RM_PID" 2>/dev/null || true
  if [ -n "$T" ]; then
    # What containerd mounted under its root and state (rootfs, netns).
    findmnt -rn -o TARGET | grep "^$T/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
  fi
  local entry
  for entry in $(comm -13 <(echo "$cni_before") <(ls -A /var/lib/cni | sort)); do
    rm -rf "/var/lib/cni/$entry"
  done
  [ -n "$run_containerd_before" ] || rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  sandbox_down
}

sandbox_up
trap 'cri_down' EXIT
trap 'cri_down; exit 130' INT TERM
T=$SB_DIR/cri
SOCK=$T/containerd.sock
IMAGE=localhost/cnichain-busybox:1
mkdir -p "$T/net.d" "$T/logs" "$T/image/bin" "$T/image/www"
touch "$T/crictl.yaml"

# The image: static busybox; its default command sleeps, as a pause
# container; the pods' containers run its httpd.
cp /bin/busybox "$T/image/bin/busybox"
echo "hello from a CRI pod" > "$T/image/www/index.html"
cat > "$T/image/Containerfile" <<'EOF'
FROM scratch
COPY bin /bin
COPY www /www
ENTRYPOINT ["/bin/busybox", "sleep", "2147483647"]
EOF
pm() { podman --root "$T/podman" --runroot "$T/podman-run" --tmpdir "$T" --storage-driver vfs --cgroup-manager cgroupfs --events-backend file "$@"; }
pm build -q -t "$IMAGE" "$T/image" >/dev/null
pm save -q --format docker-archive -o "$T/image.tar" "$IMAGE"
pm rmi -a -f >/dev/null 2>&1 || true
rm -rf "$T/podman" "$T/podman-run"

cat > "$T/config.toml" <<EOF
version = 2
root = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGE"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$T/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$SB_BIN"
    conf_dir = "$T/net.d"
    max_conf_num = 1
EOF

# containerd in the node namespace; nsenter keeps the machine's mounts.
containerd_start() {
  nsenter --net="/var/run/netns/$SB_NODE" sh -c 'ulimit -n 1024 -u 4096; exec containerd --config "$1"' sh "$T/config.toml" \
    >>"$T/containerd.log" 2>&1 &
  CTRD_PID=$!
  wait_for 120 "containerd's CRI to answer on $SOCK" cri_answers || { tail -20 "$T/containerd.log" >&2; return 1; }
}
cri_answers() { cri info >/dev/null 2>&1; }
containerd_stop() {
  kill "$CTRD_PID" 2>/dev/null || true
  wait "$CTRD_PID" 2>/dev/null || true
  CTRD_PID=""
}
# crictl's warnings (no /etc/crictl.yaml, no cgroup_parent) go to its log.
cri() { "$CRICTL" --config "$T/crictl.yaml" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --timeout 60s "$@" 2>>"$T/crictl.log"; }

# runp NAME PORT: a pod sandbox with hostPort PORT -> 80 (none if PORT is
# empty) and a web server in it; prints the sandbox ID.
runp() {
  local name=$1 port=${2:-} mappings="" pod ctr
  [ -n "$port" ] && mappings=",\"port_mappings\":[{\"protocol\":0,\"container_port\":80,\"host_port\":$port}]"
  cat > "$T/$name-pod.json" <<EOF
{"metadata":{"name":"$name","namespace":"default","uid":"uid-$name","attempt":0},
 "log_directory":"$T/logs/$name","linux":{}$mappings}
EOF
  cat > "$T/$name-ctr.json" <<EOF
{"metadata":{"name":"httpd"},"image":{"image":"$IMAGE"},
 "command":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"log_path":"httpd.log","linux":{}}
EOF
  pod=$(cri runp "$T/$name-pod.json")
  ctr=$(cri create "$pod" "$T/$name-ctr.json" "$T/$name-pod.json")
  cri start "$ctr" >/dev/null
  echo "$pod"
}
rmp() { cri stopp "$1" >/dev/null && cri rmp "$1" >/dev/null; }
network() { # network FILE: the one conflist containerd uses, from the next start
  rm -f "$T/net.d"/*
  cat > "$T/net.d/$1"
}
fetch() { # fetch NS URL: the page reaches NS (the server may take a moment)
  wait_for 60 "$2 to serve the page to $1" matches 'hello from a CRI pod' in_ns "$1" curl -s -g --max-time 5 "$2"
}
lite_rules() { (in_ns node iptables-save -t nat; in_ns node ip6tables-save -t nat) | grep -c 'CNI-LITE-DN-' || true; }
no_records() { # no_records DIR: no record under DIR (locks are dot files)
  local left
  left=$(find "$1" -type f ! -name '.*' 2>/dev/null)
  [ -z "$left" ] || { echo "left in $1: $left" >&2; return 1; }
}
in_ns node sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

network 10-podnet.conflist <<EOF
{"cniVersion":"1.0.0","name":"podnet","plugins":[
 {"type":"bridge","bridge":"cri0","isGateway":true,"ipMasq":true,"hairpinMode":true,
  "ipam":{"type":"host-local","dataDir":"$SB_DIR/host-local","ranges":[[{"subnet":"10.88.9.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"portmap-lite","stateDir":"$SB_DIR/portmap-lite","capabilities":{"portMappings":true}}]}
EOF
containerd_start
ctr --address "$SOCK" -n k8s.io images import --snapshotter native "$T/image.tar" >/dev/null
echo "== containerd $(containerd --version | awk '{print $3}') CRI, crictl $CRICTL_VERSION, plugins from $SB_BIN"

web=$(runp web 9090)
check "CRI bridge + portmap-lite: a lan client reaches the pod on node:9090" fetch lan http://192.168.0.5:9090/
check "CRI bridge + portmap-lite: the pod's DNAT chain is installed" test "$(lite_rules)" -ge 1
rmp "$web"
check "CRI bridge + portmap-lite: stopp/rmp leaves no rule" test "$(lite_rules)" = 0
check "CRI bridge + portmap-lite: stopp/rmp leaves no record" no_records "$SB_DIR/portmap-lite"

# A sandbox removed after containerd restarts: DEL gets only what
# containerd cached at ADD.
web=$(runp restarted 9091)
check "CRI restart: the pod answers on node:9091 before" fetch lan http://192.168.0.5:9091/
containerd_stop
containerd_start
rmp "$web"
check "CRI restart: rmp after a containerd restart leaves no rule" test "$(lite_rules)" = 0
check "CRI restart: rmp after a containerd restart leaves no record" no_records "$SB_DIR/portmap-lite"
containerd_stop

# The whole chain: macvlan + static-ipam -> macvlan-host-route -> portmap-lite.
machost_conflist 192.168.60.30 fd00:c0a8::60:30 | network 20-machost.conflist
containerd_start
mac=$(runp mac 8080)
check "CRI whole chain: a lan client reaches the pod on node:8080" fetch lan http://192.168.0.5:8080/
check "CRI whole chain: a lan client reaches it on [node]:8080 over IPv6" fetch lan "http://[fd00:c0a8::5]:8080/"
check "CRI whole chain: the node reaches it on its own address:8080" fetch node http://192.168.0.5:8080/
check "CRI whole chain: the node reaches the pod at the pod's address" fetch node http://192.168.60.30/
rmp "$mac"
check "CRI whole chain: stopp/rmp leaves no rule and no route for it" no_mention '192\.168\.60\.30|fd00:c0a8::60:30'
containerd_stop

# multinic: the resource-manager stand-in answers only for the pod named
# in K8S_POD_NAME, and logs every query.
rm_standin "$T/rm" multi
ip netns exec "$SB_NODE" busybox httpd -f -p 127.0.0.1:10002 -h "$T/rm" </dev/null >/dev/null 2>&1 &
RM_PID=$!
wait_for 60 "the resource-manager stand-in on 127.0.0.1:10002" matches ':10002 ' in_ns node ss -ltnH
mkdir -p "$T/dockin.d"
for f in net.d/dockin.d/*.json; do
  case "$f" in *rm-answer.json) continue ;; esac
  # containerd needs the pod's eth0 in the result: a 1.0.0 result names it.
  sed 's/"0.2.0"/"1.0.0"/' "$f" > "$T/dockin.d/$(basename "$f")"
done
network 40-multinic.conf <<EOF
{"cniVersion":"1.0.0","name":"dockin","type":"multinic","confDir":"$T/dockin.d",
 "backend":"http://127.0.0.1:10002/cgi-bin/getPodMultiNetwork","stateDir":"$SB_DIR/multinic"}
EOF
containerd_start
multi=$(runp multi)
check "CRI multinic: the RM was asked for the pod by its Kubernetes name" grep -q 'podName=multi&podNamespace=default' "$T/rm/queries"
pod_has() { # pod_has ADDRESS: the pod's network namespace holds ADDRESS
  local netns
  netns=$(cri inspectp "$multi" | jq -r '.info.runtimeSpec.linux.namespaces[] | select(.type=="network") | .path')
  matches " $1/" nsenter --net="$netns" ip -o addr
}
check "CRI multinic: eth0 has the RM's address" pod_has "$(jq -r '.data[] | select(.master) | .podIp' "$T/rm/answer.json")"
check "CRI multinic: net0 has the RM's address" pod_has "$(jq -r '.data[] | select(.master | not) | .podIp' "$T/rm/answer.json")"
asked=$(wc -l < "$T/rm/queries")
rmp "$multi"
check "CRI multinic: rmp does not ask the RM" test "$(wc -l < "$T/rm/queries")" = "$asked"
check "CRI multinic: rmp leaves no record" no_records "$SB_DIR/multinic"

report
