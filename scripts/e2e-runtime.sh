#!/usr/bin/env bash
# End to end under a real container runtime: podman (Debian's 4.3, CNI
# backend, runc) started inside the sandbox's node namespace, with our
# plugins as its CNI plugins. A container on bridge + portmap-lite answers
# through its hostPort and its rules vanish with it; a container on
# macvlan + static-ipam + macvlan-host-route is reachable from the node.
# ensure-tools.sh provides the static /bin/busybox the container runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh podman runc
. scripts/sandbox.sh
. scripts/e2e-lib.sh
SB_BIN="${SB_BIN:-$(pwd)/bin}"

# podman puts its netns under /run/netns and libcni's cache under
# /var/lib/cni (neither is configurable in 4.3): note what is there now,
# and remove whatever of it this run adds.
netns_before=$(ip netns list | awk '{print $1}' | sort)
cni_before=$(ls -A /var/lib/cni 2>/dev/null | sort || true)
mkdir -p /var/lib/cni
T=""
runtime_down() {
  if [ -n "$T" ] && [ -d "$T" ]; then
    pm rm -a -f -t 0 >/dev/null 2>&1 || true
  fi
  local ns entry
  for ns in $(comm -13 <(echo "$netns_before") <(ip netns list | awk '{print $1}' | sort)); do
    case "$ns" in netns-*) ip netns delete "$ns" 2>/dev/null || true ;; esac
  done
  for entry in $(comm -13 <(echo "$cni_before") <(ls -A /var/lib/cni | sort)); do
    rm -rf "/var/lib/cni/$entry"
  done
  sandbox_down
}

sandbox_up
trap 'runtime_down' EXIT
trap 'runtime_down; exit 130' INT TERM
T=$SB_DIR/podman
mkdir -p "$T/net.d" "$T/rootfs/bin" "$T/rootfs/www" "$T/tmp"
cp /bin/busybox "$T/rootfs/bin/busybox"
echo "hello from a podman container" > "$T/rootfs/www/index.html"
cat > "$T/containers.conf" <<CONF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$SB_BIN"]
network_config_dir = "$T/net.d"
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
cat > "$T/net.d/podnet.conflist" <<CONF
{"cniVersion":"1.0.0","name":"podnet","plugins":[
 {"type":"bridge","bridge":"podbr0","isGateway":true,"ipMasq":true,"hairpinMode":true,
  "ipam":{"type":"host-local","dataDir":"$SB_DIR/host-local","ranges":[[{"subnet":"10.88.7.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"portmap-lite","stateDir":"$SB_DIR/portmap-lite","capabilities":{"portMappings":true}}]}
CONF
cat > "$T/net.d/macnet.conflist" <<CONF
{"cniVersion":"1.0.0","name":"macnet","plugins":[
 {"type":"macvlan","master":"eno1","mode":"bridge",
  "ipam":{"type":"static-ipam","addresses":[{"address":"192.168.1.30/16","gateway":"192.168.0.1"},{"address":"fd00:c0a8::30/64"}],
          "routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"macvlan-host-route","master":"eno1","stateDir":"$SB_DIR/macvlan-host-route"}]}
CONF

machost_conflist 192.168.50.30 fd00:c0a8::50:30 > "$T/net.d/machost.conflist"
# A hostPort reached from the lan is forwarded: on, as on a Kubernetes node.
in_ns node sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

# podman in the node namespace: nsenter keeps the machine's /sys and cgroup
# mounts (ip netns exec would remount /sys); storage and state under $T.
pm() {
  CONTAINERS_CONF="$T/containers.conf" nsenter --net="/var/run/netns/$SB_NODE" \
    podman --root "$T/root" --runroot "$T/runroot" --tmpdir "$T/tmp" --storage-driver vfs --cgroup-manager cgroupfs "$@"
}
run() { # run NAME NETWORK [ARGS...]: a busybox web server container
  local name=$1 net=$2; shift 2
  pm run -d --name "$name" --network "$net" "$@" --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
    --rootfs "$T/rootfs" /bin/busybox httpd -f -p 80 -h /www >/dev/null
}
pm_in() { # pm_in CONTAINER "CMD" TEST...: the container's CMD output passes TEST
  local c=$1 cmd=$2; shift 2
  local out
  out=$(pm exec "$c" /bin/busybox $cmd) || return 1
  "$@" <<<"$out"
}
lite_chains() { in_ns node iptables-save -t nat | grep -c '^:CNI-LITE-DN-' || true; }
# through_hostport [URL]: the lan host fetches the page from URL, by default
# node:9090 (the server may take a moment to start).
through_hostport() {
  local url=${1:-http://192.168.0.5:9090/}
  wait_for 60 "$url to serve the page to the lan" matches 'hello from a podman container' in_ns lan curl -s -g --max-time 5 "$url"
}
# node_pings / lan_pings ADDR: ADDR answers a ping (an IPv6 address only
# once its DAD is done).
node_pings() { wait_for 30 "$1 to answer the node's ping" in_ns node ping -c 1 -W 2 "$1" >/dev/null; }
lan_pings() { wait_for 30 "$1 to answer the lan's ping" in_ns lan ping -c 1 -W 2 "$1" >/dev/null; }
route_via_subdevice() { matches "$1 dev eno1.host" ip -n "$SB_NODE" route show proto 197; }
no_host_routes() { [ -z "$(ip -n "$SB_NODE" route show proto 197)" ]; }

echo "== podman $(podman --version | awk '{print $3}') with runc, CNI backend, plugins from $SB_BIN"
run web podnet -p 9090:80
check "bridge + portmap-lite: a lan client reaches the container on node:9090" through_hostport
check "bridge + portmap-lite: the container's DNAT chain is installed" test "$(lite_chains)" = 1
pm rm -f -t 0 web >/dev/null
check "bridge + portmap-lite: podman rm removes the rules" test "$(lite_chains)" = 0

run mac macnet
check "macvlan + static-ipam + macvlan-host-route: the node pings the container" node_pings 192.168.1.30
check "macvlan-host-route: the host route is there" route_via_subdevice 192.168.1.30
pm rm -f -t 0 mac >/dev/null
check "macvlan-host-route: podman rm removes the route" no_host_routes

# The whole chain: macvlan + static-ipam -> macvlan-host-route -> portmap-lite.
run hostport machost -p 8080:80
check "whole chain: a lan client reaches the container on node:8080" through_hostport http://192.168.0.5:8080/
check "whole chain: a lan client reaches it on [node]:8080 over IPv6" through_hostport "http://[fd00:c0a8::5]:8080/"
check "whole chain: the node pings the container over IPv6" node_pings fd00:c0a8::50:30
pm rm -f -t 0 hostport >/dev/null
check "whole chain: podman rm leaves no rule and no route for it" no_mention '192\.168\.50\.30|fd00:c0a8::50:30'

# podman --ip/--ip6 pass bare addresses (CNI_ARGS IP=192.168.1.50,...):
# static-ipam gives them the prefix and gateway of the configured subnet.
run macip macnet --ip 192.168.1.50 --ip6 fd00:c0a8::50
check "static-ipam: podman --ip 192.168.1.50 answers the lan at that address" lan_pings 192.168.1.50
check "static-ipam: podman --ip6 fd00:c0a8::50 answers the lan at that address" lan_pings fd00:c0a8::50
check "static-ipam: the bare --ip got the configured /16" pm_in macip "ip -4 addr show eth0" grep -q '192.168.1.50/16'
pm rm -f -t 0 macip >/dev/null

report
