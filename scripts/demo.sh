#!/usr/bin/env bash
# The main job: run each example chain of net.d/ through cnitool inside a
# sandbox of network namespaces, exactly as the source documents do, print
# each result and the kernel state it produced, then delete everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/sandbox.sh
. scripts/e2e-lib.sh

netd="$(pwd)/net.d"
step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@" | sed 's/^/  /'; }

sandbox_up
step "sandbox: node namespace $SB_NODE (eno1 192.168.0.5/16), lan host $SB_LAN (192.168.0.1/16)"

# wait_dad NAME: until NAME's IPv6 addresses are no longer tentative.
wait_dad() { wait_for 60 "DAD of the IPv6 addresses in $1" no_tentative "$1"; }
no_tentative() { [ -z "$(in_ns "$1" ip -6 addr show tentative)" ]; }
# wait_listening NAME PORT: until a server listens on PORT in NAME.
wait_listening() { wait_for 60 "a server on port $2 in $1" matches ":$2 " in_ns "$1" ss -ltnH; }
# curl_from NAME URL: what NAME gets from URL.
curl_from() { printf '$ curl %s  (from %s)\n' "$2" "$1"; in_ns "$1" curl -s -g --max-time 3 "$2" | sed 's/^/  /'; }

# --- the headline: macvlan + static-ipam -> macvlan-host-route -> portmap-lite --
step "the whole chain, net.d/30-macvlan-hostport.conflist: macvlan + static-ipam -> macvlan-host-route -> portmap-lite"
step "the node forwards, as a Kubernetes node does (ip_forward=1, ipv6 all.forwarding=1)"
in_ns node sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
step "CAP_ARGS=<hostPort 8080 -> 80, tcp> cnitool add macvlan-hostport"
hp=$(sandbox_pod hostport-web)
CAP_ARGS='{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}' \
  sandbox_cnitool "$netd" add macvlan-hostport "$hp"; echo
step "a second pod of the chain, its addresses from CAP_ARGS ips, no port mappings"
peer=$(sandbox_pod hostport-peer)
CAP_ARGS='{"ips":["192.168.50.21/16","fd00:c0a8::50:21/64"]}' \
  sandbox_cnitool "$netd" add macvlan-hostport "$peer" | grep -A1 '"address"' | sed 's/^/  /'
step "on the node: host routes to the pods through eno1.host, each pod address pinned to the pod's MAC"
show in_ns node ip route show proto 197
show in_ns node ip -6 route show proto 197
show in_ns node ip neigh show dev eno1.host nud permanent
step "in the pod: the node's addresses pinned to eno1.host's MAC (the pod never asks for the node)"
show in_ns hostport-web ip neigh show dev eth0 nud permanent
step "the pod's NAT rules (the pod's gateway is the lan router, so connections are masqueraded)"
in_ns node iptables-save -t nat | grep -F 192.168.50.20 | sed 's/^/  /'
in_ns node ip6tables-save -t nat | grep -F fd00:c0a8::50:20 | sed 's/^/  /'
www0="$SB_DIR/www-hostport"
mkdir -p "$www0" && echo "hello from the macvlan pod" > "$www0/index.html"
ip netns exec "$SB_ID-hostport-web" busybox httpd -f -p 80 -h "$www0" </dev/null >/dev/null 2>&1 &
wait_dad hostport-web; wait_dad hostport-peer; wait_dad node
wait_listening hostport-web 80
step "through the hostPort from everywhere"
curl_from lan http://192.168.0.5:8080/
curl_from lan "http://[fd00:c0a8::5]:8080/"
curl_from hostport-peer http://192.168.0.5:8080/
curl_from hostport-peer "http://[fd00:c0a8::5]:8080/"
curl_from hostport-web http://192.168.0.5:8080/
curl_from node http://127.0.0.1:8080/
step "node and pod reach each other directly, IPv4 and IPv6"
curl_from node http://192.168.50.20/
curl_from node "http://[fd00:c0a8::50:20]/"
show in_ns hostport-web ping -c 1 -W 1 fd00:c0a8::5
step "cnitool del, without CAP_ARGS, in reverse order: portmap-lite, macvlan-host-route, macvlan"
sandbox_cnitool "$netd" del macvlan-hostport "$hp"
sandbox_cnitool "$netd" del macvlan-hostport "$peer"
left=$( (in_ns node iptables-save; in_ns node ip6tables-save; in_ns node ip route show proto 197; in_ns node ip -6 route show proto 197) \
  | grep -cE '192\.168\.50\.2[01]|fd00:c0a8::50:2[01]' || true)
echo "rules and routes mentioning the pods after del: $left"
[ "$left" -eq 0 ]
show in_ns hostport-web ip -br link

# --- Services from a macvlan pod: viaNode -----------------------------------------
step "Services and node-local DNS from a macvlan pod: net.d/35-macvlan-services.conflist (viaNode in macvlan-host-route)"
step "the node, as a cluster node: a kube-proxy-like rule sends Service 10.96.0.10:80 to a backend on the lan (192.168.0.9:8080)"
in_ns node iptables -t nat -A PREROUTING -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 192.168.0.9:8080
in_ns lan ip addr add 192.168.0.9/16 dev eth0
wwwl="$SB_DIR/www-lan"
mkdir -p "$wwwl" && echo "hello from a Service backend on the lan" > "$wwwl/index.html"
ip netns exec "$SB_LAN" busybox httpd -f -p 192.168.0.9:8080 -h "$wwwl" </dev/null >/dev/null 2>&1 &
svcpod=$(sandbox_pod svc-client)
sandbox_cnitool "$netd" add macvlan-services "$svcpod" | grep -B1 -A2 '"dst": "10.96' | sed 's/^/  /'
step "in the pod: the Service CIDRs and node-local DNS go to the node's address, at the sub-device's MAC"
show in_ns svc-client ip route show via 192.168.0.5
show in_ns svc-client ip neigh show 192.168.0.5
step "on the node: the reply path (connections the node translates and forwards leave with its address)"
in_ns node iptables-save -t nat | grep -F 'CNI-LITE-VIANODE' | sed 's/^/  /'
wait_listening lan 8080
curl_from svc-client http://10.96.0.10/
sandbox_cnitool "$netd" del macvlan-services "$svcpod"
in_ns node iptables -t nat -D PREROUTING -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 192.168.0.9:8080

# --- static-ipam under macvlan (seeds 001 and 003) ---------------------------
step "macvlan + static-ipam: cnitool add static-macvlan (net.d/10-static-macvlan.conflist)"
pod=$(sandbox_pod web)
sandbox_cnitool "$netd" add static-macvlan "$pod"; echo
show in_ns web ip -br addr show dev eth0
show in_ns web ip route
step "the pod pings the lan host 192.168.0.1 through its macvlan"
show in_ns web ping -c 2 -i 0.2 -W 1 192.168.0.1
step "per-pod address from CAP_ARGS ips (capability > args > CNI_ARGS)"
pod2=$(sandbox_pod web2)
CAP_ARGS='{"ips":["192.168.1.21/16"]}' CNI_ARGS='IgnoreUnknown=1;IP=192.168.1.99/16' \
  sandbox_cnitool "$netd" add static-macvlan "$pod2" | grep -A3 '"ips"'
show in_ns web2 ip -br addr show dev eth0
sandbox_cnitool "$netd" del static-macvlan "$pod2"
sandbox_cnitool "$netd" del static-macvlan "$pod"
step "after cnitool del: the pods have loopback only"
show in_ns web ip -br link

# --- the Dockin bridge network (seed 003), cniVersion 0.2.0 -------------------
step "bridge + static-ipam, cniVersion 0.2.0: CNI_ARGS='IP=192.168.2.77/24;GATEWAY=192.168.2.1' cnitool add dockin"
pod3=$(sandbox_pod dockin)
CNI_ARGS='IgnoreUnknown=1;IP=192.168.2.77/24;GATEWAY=192.168.2.1' sandbox_cnitool "$netd" add dockin "$pod3"; echo
show in_ns dockin ip -br addr show dev eth0
show in_ns dockin ip route
step "the node pings the pod over bridge br1"
show in_ns node ping -c 2 -i 0.2 -W 1 192.168.2.77
sandbox_cnitool "$netd" del dockin "$pod3"

# --- macvlan + macvlan-host-route (seed 002) ----------------------------------
step "macvlan + host-local + macvlan-host-route: cnitool add default (net.d/00-default.conflist)"
pod4=$(sandbox_pod nginx)
sandbox_cnitool "$netd" add default "$pod4"; echo
step "on the node: the bridge-mode macvlan sub-device and the host route to the pod"
show in_ns node ip link show eno1.host
show in_ns node ip route
step "the node pings the pod, the pod pings the node (plain macvlan cannot)"
show in_ns node ping -c 2 -i 0.2 -W 1 192.168.1.2
show in_ns nginx ping -c 2 -i 0.2 -W 1 192.168.0.5
sandbox_cnitool "$netd" del default "$pod4"
step "after cnitool del: the route is gone (the sub-device stays for the next pod)"
show in_ns node ip route

# --- bridge + host-local + portmap-lite (seed 000) -----------------------------
step "bridge + host-local + portmap-lite: CAP_ARGS=<hostPort 9090 -> 80, hostIP 127.0.0.1> cnitool add mynet (net.d/mynet.conflist)"
pod5=$(sandbox_pod test)
export CAP_ARGS='{"portMappings":[{"hostPort":9090,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}]}'
out=$(sandbox_cnitool "$netd" add mynet "$pod5")
unset CAP_ARGS
echo "$out"
podip=$(echo "$out" | sed -n 's/.*"address": "\([0-9.]*\)\/24".*/\1/p' | head -1)
step "iptables-save | grep $podip (in the node namespace)"
in_ns node iptables-save | grep -F "$podip" | sed 's/^/  /'
step "a server in the pod on port 80; from the node: curl 127.0.0.1:9090"
www="$SB_DIR/www"
mkdir -p "$www" && echo "hello from the pod" > "$www/index.html"
ip netns exec "$SB_ID-test" busybox httpd -f -p 80 -h "$www" </dev/null >/dev/null 2>&1 &
server=$!
wait_listening test 80
show in_ns node curl -s --max-time 3 http://127.0.0.1:9090/
kill "$server" 2>/dev/null || true
step "cnitool del mynet, without CAP_ARGS: our rules go all the same"
sandbox_cnitool "$netd" del mynet "$pod5"
left=$(in_ns node iptables-save | grep -cF "$podip" || true)
echo "iptables rules mentioning $podip after del: $left"

# --- multinic: two NICs from a resource manager (seed 003, Dockin) --------------
step "multinic: a resource-manager stand-in (busybox httpd on 127.0.0.1:10002 in the node) serves net.d/dockin.d/rm-answer.json"
rmdir="$SB_DIR/rm/rmController"
mkdir -p "$rmdir" && cp net.d/dockin.d/rm-answer.json "$rmdir/getPodMultiNetwork"
ip netns exec "$SB_NODE" busybox httpd -f -p 127.0.0.1:10002 -h "$SB_DIR/rm" </dev/null >/dev/null 2>&1 &
wait_listening node 10002
mkdir -p "$SB_DIR/net.d"
sed -e "s|/etc/cni/dockin/net.d|$(pwd)/net.d/dockin.d|" -e "s|/opt/cni/bin|$SB_BIN|" -e "s|/data/kubernetes|$SB_DIR|" \
  -e "s|localhost:10002|127.0.0.1:10002|" net.d/40-dockin-cni.conf > "$SB_DIR/net.d/40-dockin-cni.conf"
step "CNI_ARGS='IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0' cnitool add dockin-cni (cniVersion 0.2.0: the result shows the master NIC)"
pod6=$(sandbox_pod dockin-web)
CNI_ARGS='IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0' sandbox_cnitool "$SB_DIR/net.d" add dockin-cni "$pod6"; echo
step "the pod has eth0 on br0 and net0 on br1, with the RM's addresses"
show in_ns dockin-web ip -br addr
show in_ns dockin-web ip route
show in_ns node ping -c 1 -W 1 192.168.1.2
show in_ns node ping -c 1 -W 1 192.168.2.2
step "multinic's log (logFile only; stdout carries the result)"
sed 's/^/  /' "$SB_DIR/dockin-cni.log"
step "cnitool del dockin-cni: from the record, without asking the RM"
sandbox_cnitool "$SB_DIR/net.d" del dockin-cni "$pod6"
show in_ns dockin-web ip -br link

step "cleaning up the sandbox"
sandbox_down
left=$(ip netns list | grep -c "^$SB_ID-" || true)
echo "namespaces left behind: $left"
[ "$left" -eq 0 ]
