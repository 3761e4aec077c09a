#!/usr/bin/env bash
# The plugins in a real Kubernetes cluster (scripts/cluster.sh: etcd,
# kube-apiserver, controller-manager, scheduler; two nodes, each with
# containerd 2, a kubelet and kube-proxy), installed by our own DaemonSet:
# nodes NotReady until it has put the plugins and the whole chain's
# conflist in place; a Deployment spread over both nodes reached from the
# lan, the nodes and each other, over IPv4 and IPv6 (the cluster is
# dual-stack); a hostPort of both families; dual-stack ClusterIP Services
# (TCP and UDP) from macvlan pods through the real kube-proxy in both of its
# modes, with and without --cluster-cidr, each backend answering; the
# cluster's DNS (CoreDNS, itself a macvlan pod behind kube-dns) resolving
# the cluster's names and forwarding the lan's; a Dockin multinic pod; and
# the life cycle: pods deleted, a node drained, kubelet and containerd
# restarted, the DaemonSet rolled to a new image under running pods.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/e2e-lib.sh
. scripts/cluster.sh

SB_BIN="${SB_BIN:-$(pwd)/bin}"

cluster_up
T=$CL_DIR
k() { cl_kubectl "$@"; }
echo "== Kubernetes $("$CL_BIN/kubelet" --version | awk '{print $2}'), containerd $("$CL_BIN/containerd" --version | awk '{print $3}'), two nodes"

# Images, built here from scratch and imported into each node (no registry):
# the pods' (cl_busybox_image); the installer image at two versions, for
# the rolling update.
cl_busybox_image "$T/busybox.tar"
cl_coredns_image "$T/coredns.tar"
for v in 1 2; do cl_plugins_image "k8s-e2e-$v" "$T/plugins-$v.tar"; done
cl_podman_clean
for node in "${CL_NODES[@]}"; do
  cl_import "$node" "$T/busybox.tar"
  cl_import "$node" "$T/coredns.tar"
  cl_import "$node" "$T/plugins-1.tar"
  cl_import "$node" "$T/plugins-2.tar"
  cl_provision_reference_plugins "$node" "$SB_BIN"
done

ready_message() { k get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].message}'; }
not_ready_for_cni() { ! cl_node_ready "$1" && matches 'cni|CNI|network plugin' ready_message "$1"; }
for node in "${CL_NODES[@]}"; do
  check "$node starts NotReady: no CNI configuration yet" wait_for 120 "$node to say its network is not ready" not_ready_for_cni "$node"
done

# The whole chain (cl_conflist), one key per node in the ConfigMap (the
# DaemonSet picks its node's).
cl_conflist node-a portmap-lite >"$T/node-a.conflist"
cl_conflist node-b portmap-lite >"$T/node-b.conflist"
k -n kube-system create configmap cnichain-conflist --from-file "$T/node-a.conflist" --from-file "$T/node-b.conflist" >/dev/null

# deploy/daemonset.yaml as a user applies it, with the image tag of this
# run and the ConfigMap's conflist for its node.
# -service-cidrs: the installer keeps viaNode holding the cluster's ServiceCIDRs.
daemonset() { cl_daemonset "$1" '$(NODE_NAME).conflist' -service-cidrs; }
daemonset k8s-e2e-1 | k apply -f - >/dev/null
for node in "${CL_NODES[@]}"; do
  check "$node becomes Ready once the DaemonSet has installed the plugins and conflist" \
    wait_for 180 "$node to become Ready" cl_node_ready "$node"
  check "$node: the DaemonSet wrote the plugins into its /opt/cni/bin" test -x "$T/$node/mnt/opt/cni/bin/portmap-lite"
  check "$node: the DaemonSet wrote its conflist into its /etc/cni/net.d" cmp -s "$T/$node/mnt/etc/cni/net.d/30-lan.conflist" "$T/$node.conflist"
done

# Workloads: a Deployment over both nodes with a web server and a UDP
# server in each pod, its two Services, and a pod with a hostPort.
hostport_pod() { cl_hostport_pod hostport "$1" 8080 "app: hostport" | k apply -f - >/dev/null; }
k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - {name: web, image: $CL_POD_IMAGE, imagePullPolicy: Never, command: [/bin/probe, http-serve, "80"]}
      - {name: echo, image: $CL_POD_IMAGE, imagePullPolicy: Never, command: [/bin/probe, udp-serve, "5353"]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: web}
  ipFamilyPolicy: RequireDualStack
  ports: [{name: echo, port: 53, targetPort: 5353, protocol: UDP}]
EOF
hostport_pod node-a
# ready_pods SELECTOR COUNT: COUNT pods match SELECTOR and all are Ready.
ready_pods() {
  local out
  out=$(k get pod -l "$1" -o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}') || return 1
  [ "$(grep -c . <<<"$out")" -eq "$2" ] && ! grep -qv '^True$' <<<"$out"
}
pod_ready() { matches '^True$' k get pod "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'; }
check "the Deployment's two pods become Ready" wait_for 180 "two Ready web pods" ready_pods app=web 2
check "the hostPort pod becomes Ready" wait_for 180 "the hostPort pod to be Ready" pod_ready hostport

pod_on() { k get pod -l app=web --field-selector "spec.nodeName=$1" -o 'jsonpath={.items[0].metadata.name}'; }
pod_ip() { k get pod "$1" -o 'jsonpath={.status.podIP}'; }
pod_ip6() { k get pod "$1" -o 'jsonpath={.status.podIPs[1].ip}'; }
WEB_A=$(pod_on node-a) WEB_B=$(pod_on node-b)
IP_A=$(pod_ip "$WEB_A") IP_B=$(pod_ip "$WEB_B")
IP6_A=$(pod_ip6 "$WEB_A") IP6_B=$(pod_ip6 "$WEB_B")
echo "   web pods: $WEB_A $IP_A $IP6_A on node-a, $WEB_B $IP_B $IP6_B on node-b"
check "node-a's pod has a lan address from node-a's range" matches '^192\.168\.10\.' echo "$IP_A"
check "node-b's pod has a lan address from node-b's range" matches '^192\.168\.11\.' echo "$IP_B"
check "node-a's pod has an IPv6 lan address from node-a's range" matches '^fd00:c0a8::10:' echo "$IP6_A"
check "node-b's pod has an IPv6 lan address from node-b's range" matches '^fd00:c0a8::11:' echo "$IP6_B"

page() { matches 'hello from a k8s pod' "$@"; }
from_lan() { page in_lan curl -s -g --max-time 5 "$1"; }
from_node() { page in_node "$1" curl -s -g --max-time 5 "$2"; }
from_pod() { page k exec "$1" -c web -- /bin/probe http "$2"; }
url() { case $1 in *:*) echo "http://[$1]$2" ;; *) echo "http://$1$2" ;; esac; }
for ip in "$IP_A" "$IP_B" "$IP6_A" "$IP6_B"; do
  check "the lan reaches the pod at $ip" wait_for 60 "the lan to reach $ip" from_lan "$(url "$ip" /)"
  for node in "${CL_NODES[@]}"; do
    check "$node reaches the pod at $ip" wait_for 60 "$node to reach $ip" from_node "$node" "$(url "$ip" /)"
  done
done
check "node-a's pod reaches node-b's" from_pod "$WEB_A" "http://$IP_B/"
check "node-b's pod reaches node-a's" from_pod "$WEB_B" "http://$IP_A/"
check "node-a's pod reaches node-b's over IPv6" from_pod "$WEB_A" "$(url "$IP6_B" /)"
check "node-b's pod reaches node-a's over IPv6" from_pod "$WEB_B" "$(url "$IP6_A" /)"
for node in "${CL_NODES[@]}"; do
  check "node-a's pod reaches $node over IPv6 (ping)" \
    k exec "$WEB_A" -c web -- /bin/busybox ping -6 -c 1 -W 5 "${CL_NODE_IP6[$node]}"
done
check "hostPort 8080: the lan reaches node-a:8080" wait_for 60 "node-a:8080 from the lan" from_lan "http://192.168.0.11:8080/"
check "hostPort 8080: the lan reaches node-a:8080 over IPv6" wait_for 60 "[${CL_NODE_IP6[node-a]}]:8080 from the lan" from_lan "$(url "${CL_NODE_IP6[node-a]}" :8080/)"
check "hostPort 8080: node-a reaches its own address:8080" from_node node-a "http://192.168.0.11:8080/"
check "hostPort 8080: a pod on node-b reaches node-a:8080" from_pod "$WEB_B" "http://192.168.0.11:8080/"
check "hostPort 8080: a pod on node-b reaches node-a:8080 over IPv6" from_pod "$WEB_B" "$(url "${CL_NODE_IP6[node-a]}" :8080/)"

# Services from macvlan pods through the real kube-proxy, at conntrack's
# defaults (nf_conntrack_tcp_be_liberal 0: what it finds INVALID, kube-proxy's
# iptables mode drops).
for node in "${CL_NODES[@]}"; do
  check "$node runs at conntrack's default: nf_conntrack_tcp_be_liberal is 0" \
    matches '^0$' in_node "$node" cat /proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal
done
WEB_SVC=$(k get svc web -o 'jsonpath={.spec.clusterIPs[0]}') WEB_SVC6=$(k get svc web -o 'jsonpath={.spec.clusterIPs[1]}')
ECHO_SVC=$(k get svc echo -o 'jsonpath={.spec.clusterIPs[0]}') ECHO_SVC6=$(k get svc echo -o 'jsonpath={.spec.clusterIPs[1]}')
check "the web Service is dual-stack: an IPv6 ClusterIP from $CL_SERVICE_CIDR6" matches '^fd00:96::' echo "$WEB_SVC6"
# answered_by tcp|udp POD TARGET: the name of the web pod that answered
# POD's request to TARGET (a URL, or HOST:PORT for udp).
answered_by() {
  local out
  case $1 in
  tcp) out=$(k exec "$2" -c web -- /bin/probe http "$3") || return 1
    [[ $out == "hello from a k8s pod"$'\n'web-* ]] || return 1
    echo "${out#*$'\n'}" ;;
  udp) out=$(k exec "$2" -c web -- /bin/probe udp "$3" ping) || return 1
    [[ $out == web-*": ping" ]] || return 1
    echo "${out%: ping}" ;;
  esac
}
# both_answer tcp|udp POD TARGET: POD's requests to the Service at TARGET
# are answered by the web pod on each node (kube-proxy picks a backend per
# connection: within 90 s, both have); names those that did when not.
both_answer() {
  local seen=" " name deadline=$((SECONDS + 90))
  until [[ $seen == *" $WEB_A "* && $seen == *" $WEB_B "* ]]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "gave up after 90s waiting for $WEB_A and $WEB_B both to answer $2's $1 requests to $3; answered:$seen" >&2
      return 1
    fi
    if name=$(answered_by "$@"); then
      [[ $seen == *" $name "* ]] || seen+="$name "
    fi
  done
}
# resolves POD PROTO NAME ADDRESS... [@SERVER]: POD resolves NAME to each
# ADDRESS over PROTO, through its resolv.conf (the cluster's DNS) or at
# SERVER (HOST:PORT).
resolves() {
  local pod=$1 proto=$2 name=$3 out a server=()
  shift 3
  [[ ${*: -1} != @* ]] || server=("${*: -1}")
  out=$(k exec "$pod" -c web -- /bin/probe dns "$proto" "$name" ${server[@]+"${server[@]#@}"}) || return 1
  for a in "$@"; do
    [[ $a == @* ]] || grep -qxF -- "$a" <<<"$out" || return 1
  done
}
dns_checks() { # dns_checks HOW POD: the cluster's DNS answers POD
  local how=$1 pod=$2
  check "$how: $pod resolves kubernetes.default.svc.cluster.local over UDP" \
    wait_for 60 "$pod to resolve the kubernetes Service's name" resolves "$pod" udp kubernetes.default.svc.cluster.local 10.96.0.1
  check "$how: $pod resolves kubernetes.default (its search list) over TCP" \
    wait_for 60 "$pod to resolve kubernetes.default over TCP" resolves "$pod" tcp kubernetes.default 10.96.0.1
  check "$how: $pod resolves the web Service's name to its IPv4 and IPv6 ClusterIPs" \
    wait_for 60 "$pod to resolve web.default.svc.cluster.local" resolves "$pod" udp web.default.svc.cluster.local "$WEB_SVC" "$WEB_SVC6"
  check "$how: $pod resolves a lan name (CoreDNS forwards it to the lan's resolver) over UDP" \
    wait_for 60 "$pod to resolve gateway.lan.example" resolves "$pod" udp gateway.lan.example 192.168.0.1
  check "$how: $pod resolves a lan name over TCP, asking kube-dns's IPv6 address" \
    wait_for 60 "$pod to resolve gateway.lan.example at [${CL_DNS_IPS[1]}]:53" resolves "$pod" tcp gateway.lan.example fd00:c0a8::1 "@[${CL_DNS_IPS[1]}]:53"
}
# kube_proxy_rules NODE: kube-proxy's chains and tables on NODE, one a line
# (iptables' of both families; nftables' kube-proxy tables).
# Fails when the node's state cannot be read; prints nothing when none.
kube_proxy_rules() {
  local out
  out=$(in_node "$1" iptables-save && in_node "$1" ip6tables-save && in_node "$1" nft list tables) || return 1
  awk '/^:KUBE-(SERVICES|POSTROUTING|NODEPORTS|PROXY-CANARY|PROXY-FIREWALL|FORWARD|EXTERNAL-SERVICES|SVC-|SEP-)|^table ip6? kube-proxy$/' <<<"$out"
}
# has_kube_proxy_rules NODE PATTERN: they are there (PATTERN: of that mode).
has_kube_proxy_rules() { matches "$2" kube_proxy_rules "$1"; }
coredns_ready() { # both CoreDNS pods are Ready (its ready plugin: synced with the API server)
  local out
  out=$(k -n kube-system get pod -l k8s-app=kube-dns -o 'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}') &&
    [ "$out" = "True True" ]
}
coredns_deployed=""
for mode in iptables nftables; do
  case $mode in
  iptables) mode_rules='^:KUBE-SERVICES' ;;
  nftables) mode_rules='^table ip6 kube-proxy$' ;;
  esac
  for cidr in "" "$CL_POD_CIDR,$CL_POD_CIDR6"; do
    for node in "${CL_NODES[@]}"; do cl_kube_proxy_start "$node" "$mode" "$cidr"; done
    how="kube-proxy $mode without --cluster-cidr"
    [ -z "$cidr" ] || how="kube-proxy $mode --cluster-cidr $cidr"
    for node in "${CL_NODES[@]}"; do
      check "$how: its rules are on $node" wait_for 60 "kube-proxy's $mode rules on $node" has_kube_proxy_rules "$node" "$mode_rules"
    done
    if [ -z "$coredns_deployed" ]; then
      # The cluster's DNS, once a kube-proxy gives its pods the API server
      # (the kubernetes Service) to sync with.
      cl_coredns_manifest | k apply -f - >/dev/null
      check "CoreDNS, two macvlan pods, becomes Ready: each reached the API server through the kubernetes Service" \
        wait_for 180 "two Ready CoreDNS pods" coredns_ready
      coredns_deployed=1
    fi
    for pod in "$WEB_A" "$WEB_B"; do
      check "$how: $pod reaches the TCP Service $WEB_SVC" wait_for 60 "$pod to reach $WEB_SVC:80" from_pod "$pod" "http://$WEB_SVC/"
      check "$how: both backends answer $pod at the TCP Service $WEB_SVC" both_answer tcp "$pod" "http://$WEB_SVC/"
      check "$how: both backends answer $pod at the TCP Service [$WEB_SVC6]" both_answer tcp "$pod" "$(url "$WEB_SVC6" /)"
      check "$how: both backends answer $pod at the UDP Service $ECHO_SVC:53" both_answer udp "$pod" "$ECHO_SVC:53"
      check "$how: both backends answer $pod at the UDP Service [$ECHO_SVC6]:53" both_answer udp "$pod" "[$ECHO_SVC6]:53"
      dns_checks "$how" "$pod"
    done
    for node in "${CL_NODES[@]}"; do
      cl_kube_proxy_stop "$node"
      check "$how: stopped (--cleanup), its rules are gone from $node before the next starts" nothing_from kube_proxy_rules "$node"
    done
  done
done

for node in "${CL_NODES[@]}"; do cl_kube_proxy_start "$node" iptables "$CL_POD_CIDR,$CL_POD_CIDR6"; done

# Service ranges from the cluster: the DaemonSet's installers (-service-cidrs)
# keep their conflist's viaNode holding the cluster's ServiceCIDRs
# (networking.k8s.io/v1), read with the least RBAC (list and watch of them).
sleeper_pod() { # sleeper_pod NAME NODE
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $2
  terminationGracePeriodSeconds: 0
  containers: [{name: web, image: $CL_POD_IMAGE, imagePullPolicy: Never}]
EOF
}
agent_log() { # agent_log NODE: what the agent on NODE has logged
  local pod
  pod=$(k -n kube-system get pod -l app.kubernetes.io/name=cnichain-plugins --field-selector "spec.nodeName=$1" -o 'jsonpath={.items[0].metadata.name}') || return 1
  k -n kube-system logs "$pod"
}
vianode() { jq -c '.plugins[] | select(.type == "macvlan-host-route") | .viaNode' "$T/$1/mnt/etc/cni/net.d/30-lan.conflist"; }
own_vianode() { matches '^\["10\.96\.0\.0/16","fd00:96::/112"\]$' vianode "$1"; }
agent_logged() { # agent_logged NODE PATTERN
  local log
  log=$(agent_log "$1") && grep -qE -- "$2" <<<"$log"
}
for node in "${CL_NODES[@]}"; do
  check "$node: its installer follows the cluster's ServiceCIDRs (the default one, as the API server made it)" \
    wait_for 60 "$node's installer to log the cluster's ServiceCIDRs" agent_logged "$node" 'msg="viaNode follows the cluster.s ServiceCIDRs" cidrs=10\.96\.0\.0/16,fd00:96::/112 '
  check "$node: before a ServiceCIDR is added, viaNode is the conflist's own" own_vianode "$node"
done
k apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: extra}
spec: {cidrs: [10.97.0.0/24, "fd00:97::/120"]}
EOF
# The API server allocates from a new ServiceCIDR once it is Ready.
check "the new ServiceCIDR becomes Ready" wait_for 60 "ServiceCIDR extra to be Ready" \
  matches '^True$' k get servicecidr extra -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
extra_service() {
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: extra}
spec:
  selector: {app: web}
  ipFamilyPolicy: RequireDualStack
  clusterIP: 10.97.0.10
  clusterIPs: [10.97.0.10, "fd00:97::a"]
  ports: [{name: http, port: 80, protocol: TCP}]
EOF
}
check "a Service is allocated from the new ServiceCIDR" wait_for 60 "the Service extra at 10.97.0.10 and fd00:97::a" extra_service
check "the Service's addresses are the new range's" matches '^10\.97\.0\.10 fd00:97::a$' k get svc extra -o 'jsonpath={.spec.clusterIPs[0]} {.spec.clusterIPs[1]}'
for node in "${CL_NODES[@]}"; do
  check "ServiceCIDR added: $node's installed conflist routes it through the node (viaNode)" \
    wait_for 60 "$node's viaNode to hold the new ServiceCIDR" matches '^\["10\.96\.0\.0/16","10\.97\.0\.0/24","fd00:96::/112","fd00:97::/120"\]$' vianode "$node"
  sleeper_pod "new-$node" "$node" | k apply -f - >/dev/null
  check "a pod created on $node after it becomes Ready" wait_for 180 "new-$node to be Ready" pod_ready "new-$node"
  check "a pod created on $node after it reaches the Service allocated from it" wait_for 60 "new-$node to reach 10.97.0.10" from_pod "new-$node" http://10.97.0.10/
  check "a pod created on $node after it reaches the Service's IPv6 address from it" wait_for 60 "new-$node to reach [fd00:97::a]" from_pod "new-$node" "http://[fd00:97::a]/"
  k delete pod "new-$node" --wait=true --timeout 120s >/dev/null
done
# A restarted installer keeps its rewrite: until it reaches the API server
# again (on a rebooted node, once kube-proxy runs), new pods still get the
# new range. It says so on its first line for the conflist ("unchanged";
# the conflist as given would be "written").
k -n kube-system delete pod -l app.kubernetes.io/name=cnichain-plugins --field-selector spec.nodeName=node-a --wait=true --timeout 120s >/dev/null
check "node-a's DaemonSet pod is made anew" cl_rolled_out 180
check "node-a: its new installer kept the rewrite holding the new ServiceCIDR" \
  wait_for 60 "node-a's new installer to log its install" agent_logged node-a '^unchanged /host/etc/cni/net.d/30-lan.conflist$'
check "node-a: viaNode still holds the new ServiceCIDR" \
  matches '^\["10\.96\.0\.0/16","10\.97\.0\.0/24","fd00:96::/112","fd00:97::/120"\]$' vianode node-a
for node in "${CL_NODES[@]}"; do
  check "$node's installer logged that viaNode follows the new ServiceCIDR" \
    agent_logged "$node" 'msg="viaNode follows the cluster.s ServiceCIDRs" cidrs=10\.96\.0\.0/16,10\.97\.0\.0/24,fd00:96::/112,fd00:97::/120 '
done
k delete svc extra --wait=true --timeout 120s >/dev/null
k delete servicecidr extra --wait=true --timeout 120s >/dev/null
for node in "${CL_NODES[@]}"; do
  check "ServiceCIDR deleted: $node's viaNode is the conflist's own again" \
    wait_for 60 "$node's viaNode to drop the deleted ServiceCIDR" own_vianode "$node"
done

# What a node holds of a pod: rules, routes, the plugins' records and
# host-local's lease mentioning its address.
# mentions NODE ADDRESS: the node's state that names ADDRESS (its rules,
# our routes, the files under /var/lib/cni holding it or named so); fails
# (1) when none does, and with 2 when the state could not be read.
mentions() {
  local rules files
  rules=$(in_node "$1" iptables-save && in_node "$1" ip6tables-save && in_node "$1" nft list ruleset &&
    in_node "$1" ip route show proto 197 && in_node "$1" ip -6 route show proto 197) || return 2
  files=$(grep -rsF --exclude 'last_reserved_ip*' -- "$2" "$T/$1/mnt/var/lib/cni"; find "$T/$1/mnt/var/lib/cni" -name "$2")
  grep -F -- "$2" <<<"$rules"$'\n'"$files"
}
forgotten() { local rc=0; mentions "$1" "$2" >/dev/null || rc=$?; [ "$rc" -eq 1 ]; }
# records NODE: the plugins' records of pods on NODE (locks are dot files;
# the sub-device's answers stay with it, by design).
records() {
  local d dirs=()
  for d in portmap-lite macvlan-host-route multinic; do
    [ ! -d "$T/$1/mnt/var/lib/cni/$d" ] || dirs+=("$T/$1/mnt/var/lib/cni/$d")
  done
  [ ${#dirs[@]} -gt 0 ] || return 0
  find "${dirs[@]}" -type f ! -name '.*' ! -name 'answers-*' | sort
}
some_records() { matches . records "$1"; }
# no_records_within SECONDS NODE: waits for NODE's records to go (quietly);
# names those left when they do not.
no_records_within() {
  wait_for "$1" "$2's records to go" nothing_from records "$2" 2>/dev/null || nothing_from records "$2"
}
# lite_chains NODE: portmap-lite's rules of both families on NODE (fails when
# they cannot be read).
lite_chains() {
  local nat
  nat=$(in_node "$1" iptables-save -t nat && in_node "$1" ip6tables-save -t nat) || return 1
  awk '/^-A CNI-LITE/' <<<"$nat" | sort
}

# Deleting a pod.
HP_IP=$(pod_ip hostport) HP_IP6=$(pod_ip6 hostport)
dnat_8080() { matches '--dport 8080' in_node node-a "$1" -t nat; } # dnat_8080 iptables-save|ip6tables-save
no_dnat_8080() {
  local nat
  nat=$(in_node node-a iptables-save -t nat && in_node node-a ip6tables-save -t nat) || return 1
  ! grep -- '--dport 8080' <<<"$nat" >&2
}
check "before it is deleted, node-a holds the hostPort pod's state" mentions node-a "$HP_IP"
check "before it is deleted, node-a holds the hostPort pod's IPv6 state" mentions node-a "$HP_IP6"
check "before it is deleted, node-a holds a DNAT for 8080" dnat_8080 iptables-save
check "before it is deleted, node-a holds an IPv6 DNAT for 8080" dnat_8080 ip6tables-save
k delete pod hostport --wait=true --timeout 120s >/dev/null
check "deleting the hostPort pod leaves nothing of it on node-a" \
  wait_for 60 "node-a to forget $HP_IP" forgotten node-a "$HP_IP"
check "deleting the hostPort pod leaves nothing of its IPv6 address on node-a" \
  wait_for 60 "node-a to forget $HP_IP6" forgotten node-a "$HP_IP6"
check "deleting the hostPort pod leaves no DNAT for 8080" wait_for 60 "node-a's rules to drop 8080" no_dnat_8080

# Draining a node: its pod is evicted; node-a keeps serving.
check "before the drain, node-b holds its pod's state" mentions node-b "$IP_B"
check "before the drain, node-b holds its pod's IPv6 state" mentions node-b "$IP6_B"
check "before the drain, node-b holds records" some_records node-b
k drain node-b --ignore-daemonsets --force --grace-period 0 --timeout 120s >/dev/null 2>&1
check "draining node-b evicts its pod and leaves nothing of it" \
  wait_for 60 "node-b to forget $IP_B" forgotten node-b "$IP_B"
check "draining node-b leaves nothing of its pod's IPv6 address" \
  wait_for 60 "node-b to forget $IP6_B" forgotten node-b "$IP6_B"
check "draining node-b leaves no record on it" no_records_within 60 node-b
check "node-a's pod still answers the lan while node-b is drained" from_lan "http://$IP_A/"
k uncordon node-b >/dev/null
check "the Deployment gets its pod back on node-b" wait_for 180 "two Ready web pods" ready_pods app=web 2
WEB_B=$(pod_on node-b) IP_B=$(pod_ip "$WEB_B")

# The node agent (the DaemonSet's, in its unprivileged container) beside
# kube-proxy and pods that came and went: kube-proxy's four mode changes
# and its chains, the pods deleted, evicted and made anew, their links
# moved and routes deleted by their own DELs made it restore nothing.
# event_restores NODE: the agent's restores that events called for (not its
# first, even with events of its start coalesced into it, nor the second
# look after one), one line each.
event_restores() {
  local log
  log=$(agent_log "$1") || return 1
  awk '/msg=restore / && !/ after="?start[;" ]/ && !/ after="a second look" /' <<<"$log"
}
for node in "${CL_NODES[@]}"; do
  check "$node: its agent logged its first restore" matches 'msg=restore .*after="?start' agent_log "$node"
  check "$node: kube-proxy's mode changes and the pods' comings and goings made its agent restore nothing" nothing_from event_restores "$node"
done

# Deleting the DaemonSet's pods: it recreates them; the pods' rules,
# routes and records stay as they were.
before_a=$(lite_chains node-a && records node-a) && before_b=$(lite_chains node-b && records node-b)
check "node-a holds its pods' chains and records before the DaemonSet's pods are deleted" test -n "$before_a"
check "node-b holds its pods' chains and records before the DaemonSet's pods are deleted" test -n "$before_b"
k -n kube-system delete pod -l app.kubernetes.io/name=cnichain-plugins --wait=true --timeout 120s >/dev/null
check "the DaemonSet's pods come back" cl_rolled_out 180
for node in "${CL_NODES[@]}"; do
  check "$node: its new installer kept the conflist it had rewritten" \
    wait_for 60 "$node's new installer to log its install" agent_logged "$node" '^unchanged /host/etc/cni/net.d/30-lan.conflist$'
done
same_as() { local now; now=$(lite_chains "$1" && records "$1") && [ "$now" = "$2" ]; }
check "deleting the DaemonSet's pods changes nothing of node-a's pods" same_as node-a "$before_a"
check "deleting the DaemonSet's pods changes nothing of node-b's pods" same_as node-b "$before_b"

# kubelet and containerd restarts under running pods.
hostport_pod node-a
check "a new hostPort pod becomes Ready" wait_for 180 "the hostPort pod to be Ready" pod_ready hostport
# What others take of ours on node-a, put back by its agent: each deletion
# calls for a restore (counted in its log), and the pod's paths answer.
event_restore_count() {
  local log
  log=$(agent_log "$1") || return 1
  awk '/msg=restore / && !/ after="?start[;" ]/ && !/ after="a second look" / {n++} END {print n+0}' <<<"$log"
}
restores_past() { local n; n=$(event_restore_count "$1") || return 1; [ "$n" -gt "$2" ]; }
take_from_node_a() { # take_from_node_a CMD...: runs CMD on node-a; checks its agent restores after it
  local before
  before=$(event_restore_count node-a)
  in_node node-a "$@"
  check "agent: $* on node-a is seen and put back" wait_for 60 "node-a's agent to restore after $*" restores_past node-a "$before"
}
agent_logged_no() { # agent_logged_no NODE PATTERN
  local log
  log=$(agent_log "$1") || return 1
  ! grep -E -- "$2" <<<"$log" >&2
}
take_from_node_a iptables -t nat -F
check "agent: after iptables -t nat -F, the lan reaches node-a:8080" wait_for 60 "node-a:8080 from the lan" from_lan "http://192.168.0.11:8080/"
take_from_node_a nft flush ruleset
check "agent: after nft flush ruleset, the lan reaches node-a:8080" wait_for 60 "node-a:8080 from the lan" from_lan "http://192.168.0.11:8080/"
take_from_node_a ip link del eno1.host
check "agent: the sub-device it made anew answers ARP only for its pods (arp_filter, set without a writable /proc/sys)" \
  wait_for 60 "arp_filter 1 on node-a's eno1.host" matches '^1$' in_node node-a cat /proc/sys/net/ipv4/conf/eno1.host/arp_filter
check "agent: after the sub-device was deleted, node-a reaches its pod" wait_for 60 "node-a to reach $IP_A" from_node node-a "http://$IP_A/"
take_from_node_a ip route flush proto 197
check "agent: after the host routes were flushed, node-a reaches its pod" wait_for 60 "node-a to reach $IP_A" from_node node-a "http://$IP_A/"
# (Four takes within 10 s are what its back-off is for: from the fourth, it
# waits a second, then two; not an error.)
check "agent: node-a's agent logged its restores" matches 'msg=restore ' agent_log node-a
check "agent: node-a's agent logged no error" agent_logged_no node-a 'level=ERROR'

# probe_start / probes_all_answered: node-a's hostPort probed from the lan
# every 200 ms in the background, meanwhile; then whether every probe got
# the page (and how many there were).
probe_start() {
  (while :; do
    if from_lan http://192.168.0.11:8080/; then echo ok; else echo FAIL; fi
    sleep 0.2
  done >"$T/probes") {CL_LOCK}>&- &
  PROBE=$!
}
probe_stop() { kill "$PROBE" 2>/dev/null; wait "$PROBE" 2>/dev/null || true; }
probes_all_answered() { grep -q ok "$T/probes" && ! grep -q FAIL "$T/probes"; }
probes() { echo "$(grep -c . "$T/probes") probes"; }

# serves NODE AFTER: NODE's new kubelet and containerd serve: a pod created
# there after AFTER becomes Ready, and an exec into it answers.
serves() {
  local pod=after-$2-$1
  sleeper_pod "$pod" "$1" | k apply -f - >/dev/null || return 1
  wait_for 180 "$pod to be Ready on $1" pod_ready "$pod" && matches '^served$' k exec "$pod" -- /bin/busybox echo served || return 1
  k delete pod "$pod" --wait=true --timeout 120s >/dev/null
}
probe_start
for node in "${CL_NODES[@]}"; do
  cl_kubelet_stop "$node"
  cl_kubelet_start "$node"
done
for node in "${CL_NODES[@]}"; do
  check "after its kubelet restarted, $node serves: a new pod is Ready and exec'd into" serves "$node" kubelet-restart
done
probe_stop
check "kubelet restarts: every probe of node-a:8080 from the lan was answered ($(probes))" probes_all_answered
check "after kubelet restarts: the lan reaches node-b's pod" from_lan "http://$IP_B/"
# kubectl exec goes through each node's new kubelet (its server bound anew).
check "after kubelet restarts: kubectl exec into node-a's pod works" from_pod "$WEB_A" "http://$IP_B/"
check "after kubelet restarts: kubectl exec into node-b's pod works" from_pod "$WEB_B" "http://$IP_A/"
probe_start
for node in "${CL_NODES[@]}"; do
  cl_containerd_stop "$node"
  cl_containerd_start "$node"
done
for node in "${CL_NODES[@]}"; do
  check "after its containerd restarted, $node serves: a new pod is Ready and exec'd into" serves "$node" containerd-restart
done
probe_stop
check "containerd restarts: every probe of node-a:8080 from the lan was answered ($(probes))" probes_all_answered
check "after containerd restarts: node-b reaches node-a's pod" from_node node-b "http://$IP_A/"
check "after containerd restarts: kubectl exec into node-b's pod works" \
  wait_for 60 "an exec into $WEB_B through the new containerd" from_pod "$WEB_B" "http://$IP_A/"
for node in "${CL_NODES[@]}"; do
  check "after the restarts, $node is Ready" wait_for 180 "$node to be Ready again" cl_node_ready "$node"
done

# A new image rolled out by the DaemonSet, under running pods.
probe_start
daemonset k8s-e2e-2 | k apply -f - >/dev/null
check "the DaemonSet rolls out the new image" cl_rolled_out 300
probe_stop
check "during the rollout, every probe of node-a:8080 from the lan was answered ($(probes))" probes_all_answered
version_of() { "$T/$1/mnt/opt/cni/bin/$2" </dev/null 2>&1; }
for node in "${CL_NODES[@]}"; do
  for p in static-ipam macvlan-host-route portmap-lite multinic; do
    check "$node: $p is the new version" matches 'k8s-e2e-2' version_of "$node" "$p"
  done
done
k delete pod hostport --wait=true --timeout 120s >/dev/null
hostport_pod node-b
check "a pod made with the new binaries becomes Ready" wait_for 180 "the hostPort pod to be Ready" pod_ready hostport
check "the new pod's hostPort answers the lan at node-b:8080" wait_for 60 "node-b:8080 from the lan" from_lan "http://192.168.0.12:8080/"

# A Dockin multinic pod: RuntimeClass "dockin" is containerd's runtime of
# that name, whose CNI configuration is multinic; the resource manager (a
# stand-in answering for that pod only) gives its two NICs static addresses.
mkdir -p "$T/node-a/mnt/etc/cni/net.d/dockin" "$T/node-a/mnt/etc/cni/net.d/dockin.d"
rm_standin "$T/rm" multi
cl_spawn_in_node node-a/rm node-a busybox httpd -f -p 127.0.0.1:10002 -h "$T/rm"
wait_for 60 "the resource-manager stand-in on node-a's 127.0.0.1:10002" matches ':10002 ' in_node node-a ss -ltnH
for f in net.d/dockin.d/*.json; do
  case "$f" in *rm-answer.json) continue ;; esac
  sed 's/"0.2.0"/"1.0.0"/' "$f" >"$T/node-a/mnt/etc/cni/net.d/dockin.d/$(basename "$f")"
done
cat >"$T/node-a/mnt/etc/cni/net.d/dockin/40-multinic.conf" <<EOF
{"cniVersion":"1.0.0","name":"dockin","type":"multinic","confDir":"/etc/cni/net.d/dockin.d",
 "backend":"http://127.0.0.1:10002/cgi-bin/getPodMultiNetwork"}
EOF
k apply -f - >/dev/null <<EOF
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: dockin}
handler: dockin
---
apiVersion: v1
kind: Pod
metadata: {name: multi}
spec:
  nodeName: node-a
  runtimeClassName: dockin
  terminationGracePeriodSeconds: 0
  containers:
  - {name: main, image: $CL_POD_IMAGE, imagePullPolicy: Never}
EOF
check "multinic: the pod becomes Ready" wait_for 180 "the multinic pod to be Ready" pod_ready multi
check "multinic: the RM was asked for the pod by its Kubernetes name" grep -q 'podName=multi&podNamespace=default' "$T/rm/queries"
multi_has() { matches " $1/" k exec multi -- /bin/busybox ip -o addr; }
check "multinic: eth0 has the RM's address" multi_has "$(jq -r '.data[] | select(.master) | .podIp' "$T/rm/answer.json")"
check "multinic: net0 has the RM's address" multi_has "$(jq -r '.data[] | select(.master | not) | .podIp' "$T/rm/answer.json")"
check "multinic: the pod's IP in the API is eth0's" matches '^192\.168\.71\.' pod_ip multi
multinic_records() { find "$T/node-a/mnt/var/lib/cni/multinic" -type f ! -name '.*'; }
check "multinic: node-a holds the pod's multinic record" matches . multinic_records
k delete pod multi --wait=true --timeout 120s >/dev/null
check "multinic: deleting the pod leaves no record" wait_for 60 "node-a's multinic records to go" nothing_from multinic_records

# Everything deleted: nothing of any pod is left on either node.
pod_chains_or_routes() { # what NODE holds of pods, one a line: their DNAT chains, our host routes
  local nat routes
  nat=$(in_node "$1" iptables-save -t nat && in_node "$1" ip6tables-save -t nat) || return 1
  routes=$(in_node "$1" ip route show proto 197 && in_node "$1" ip -6 route show proto 197) || return 1
  awk '/^-A CNI-LITE-DN-/' <<<"$nat"
  [ -z "$routes" ] || printf '%s\n' "$routes"
}
for node in "${CL_NODES[@]}"; do
  check "before everything is deleted, $node holds records" some_records "$node"
  check "before everything is deleted, $node holds pod chains and routes" matches . pod_chains_or_routes "$node"
done
k delete deployment web --wait=true --timeout 120s >/dev/null
k -n kube-system delete deployment coredns --wait=true --timeout 120s >/dev/null
k delete pod hostport --wait=true --timeout 120s >/dev/null
no_pods() {
  local web dns
  web=$(k get pod -l app=web -o name) && dns=$(k -n kube-system get pod -l k8s-app=kube-dns -o name) && [ -z "$web$dns" ]
}
check "all pods deleted: no web or CoreDNS pod is left" wait_for 120 "the web and CoreDNS pods to go" no_pods
for node in "${CL_NODES[@]}"; do
  check "all pods deleted: no record is left on $node" no_records_within 60 "$node"
  check "all pods deleted: no pod chain and no pod route is left on $node" nothing_from pod_chains_or_routes "$node"
done

report
