# shellcheck shell=bash
# A two-node Kubernetes cluster inside the sandbox, from the real components
# scripts/k8s-build.sh builds (nothing of ours stands in for them). Source
# it, call cluster_up, and everything is stopped and removed on exit, on
# failure and on Ctrl-C. Nothing of the machine's own network is touched:
#
#   lan    ($CL_ID-lan):    bridge lan0 192.168.0.1/16 fd00:c0a8::1/64, the lan's router, its DNS
#                           resolver (CoreDNS, zone lan.example) and a host on it
#   cp     ($CL_ID-cp):     eth0 192.168.0.2 fd00:c0a8::2: etcd, kube-apiserver (:6443), controller-manager, scheduler
#   node-a ($CL_ID-node-a): eno1 192.168.0.11 fd00:c0a8::11 } containerd 2, kubelet, kube-proxy, each node in a
#   node-b ($CL_ID-node-b): eno1 192.168.0.12 fd00:c0a8::12 } mount namespace of its own (below)
#
# The cluster is dual-stack, IPv4 first: two Service ranges, pods of both
# families on the lan.
#
# A node's mount namespace has its own /opt/cni/bin, /etc/cni/net.d,
# /var/lib/cni, /var/lib/kubelet, /var/log/pods, /var/lib/containerd, /run/containerd and
# /run/netns (directories under $CL_DIR bound there; a missing mount point
# is made and removed again), and its own copies of the six kernel
# settings a kubelet would otherwise set for the whole machine
# (vm.overcommit_memory, kernel.panic, ...): it finds them as it wants them.
# Its cgroups live under a cgroupRoot of this run's in every hierarchy
# (cgroups v1 here; v2's unified one is handled alike, untested here).

CL_ID="cnichain-k8s-$$-$RANDOM" # also names cgroups, which every mount and PID namespace shares
CL_DIR=""
CL_BIN=""
CL_NODES=(node-a node-b)
declare -A CL_NODE_IP=([node-a]=192.168.0.11 [node-b]=192.168.0.12)
declare -A CL_NODE_IP6=([node-a]=fd00:c0a8::11 [node-b]=fd00:c0a8::12)
CL_CP_IP=192.168.0.2
CL_CP_IP6=fd00:c0a8::2
CL_SERVICE_CIDR=10.96.0.0/16
CL_SERVICE_CIDR6=fd00:96::/112
CL_DNS_IPS=(10.96.0.10 fd00:96::a) # the kube-dns Service's, as kubeadm picks them (each range's tenth)
# The pods' image (cl_busybox_image), also every sandbox's "pause" image.
CL_POD_IMAGE=localhost/cnichain-busybox:1
CL_DNS_IMAGE=localhost/cnichain-coredns:1
declare -A CL_HOLDER=() # node -> the process that holds its mount namespace
declare -A CL_PID=()    # "node/component" or "cp/component" -> its PID
CL_MADE_DIRS=()         # mount points this run had to create on the machine

# The kernel settings a kubelet sets unless protectKernelDefaults, with the
# values it wants (k8s.io/component-helpers/node/util/sysctl).
declare -A CL_KUBELET_SYSCTLS=([vm/overcommit_memory]=1 [vm/panic_on_oom]=0 [kernel/panic]=10
  [kernel/panic_on_oops]=1 [kernel/keys/root_maxkeys]=1000000 [kernel/keys/root_maxbytes]=25000000)
CL_NODE_MOUNTS=(/opt/cni/bin /etc/cni/net.d /var/lib/cni /var/lib/kubelet /var/log/pods /var/lib/containerd /run/containerd /run/netns)

cl_log() { echo "$CL_DIR/logs/$1.log"; }

# cl_kubectl ARGS...: kubectl as the cluster's admin, from a host on the lan
# (never from the machine's own network namespace).
cl_kubectl() {
  nsenter --net="/var/run/netns/$CL_ID-lan" "$CL_BIN/kubectl" --kubeconfig "$CL_DIR/admin.kubeconfig" --request-timeout 60s "$@"
}

# in_node NODE CMD...: CMD in NODE's network and mount namespaces.
in_node() {
  local node=$1
  shift
  nsenter -t "${CL_HOLDER[$node]}" --mount --net "$@"
}
in_lan() { ip netns exec "$CL_ID-lan" "$@"; }

# cl_spawn KEY CMD...: starts a component in the background, its output in
# logs/KEY (with / as -), and remembers its PID under KEY; it does not hold
# the cluster lock (were the script killed, a component left would keep
# every later run waiting). CMD must be a
# program that ends in an exec of the component (nsenter, env, sh -c
# 'exec ...'), never a shell function: a function runs in a subshell of its
# own, whose PID a stop would kill, leaving the component running.
cl_spawn() {
  local key=$1
  shift
  "$@" >>"$(cl_log "${key//\//-}")" 2>&1 </dev/null {CL_LOCK}>&- &
  CL_PID[$key]=$!
}
# cl_spawn_in_node KEY NODE CMD...: cl_spawn in NODE's namespaces.
cl_spawn_in_node() {
  local key=$1 node=$2
  shift 2
  cl_spawn "$key" nsenter -t "${CL_HOLDER[$node]}" --mount --net "$@"
}

# cl_stop KEY: SIGTERM, then SIGKILL after 30 s (kube-apiserver takes more
# than 10 s to stop).
cl_stop() {
  local pid=${CL_PID[$1]:-} i
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "CL_PID[$1]"
}

cl_hierarchies() { # the cgroup hierarchies (v1's, or the unified v2 one), one directory each
  findmnt -rn -t cgroup,cgroup2 -o TARGET
}
cl_cgroup_root() { echo "/$CL_ID-$1"; }

# cl_kill_pods NODE: SIGKILL to every process in NODE's cgroups (its pods).
cl_kill_pods() {
  local h f
  for h in $(cl_hierarchies); do
    [ -d "$h$(cl_cgroup_root "$1")" ] || continue
    while read -r f; do
      { xargs -r kill -9 <"$f"; } 2>/dev/null || true
    done < <(find "$h$(cl_cgroup_root "$1")" -name cgroup.procs 2>/dev/null)
  done
}

# cl_node_pids NODE: the processes in NODE's mount namespace (containerd,
# its shims, kubelet, kube-proxy, the holder).
cl_node_pids() {
  local holder=${CL_HOLDER[$1]:-} want p
  [ -n "$holder" ] || return 0
  want=$(readlink "/proc/$holder/ns/mnt" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
  done
  return 0
}

cl_remove_cgroups() { # cl_remove_cgroups NODE: its cgroups, deepest first, once empty
  local h root deadline
  root=$(cl_cgroup_root "$1")
  deadline=$((SECONDS + 60))
  for h in $(cl_hierarchies); do
    [ -d "$h$root" ] || continue
    until find "$h$root" -depth -type d -exec rmdir {} + 2>/dev/null; [ ! -d "$h$root" ]; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "cluster: $h$root still holds processes after 60 s"
        break
      fi
      cl_kill_pods "$1"
      sleep 0.2
    done
  done
}

# cluster_down: everything stopped and removed. Bash's notices of the
# processes it kills ("Killed ...") go nowhere; what went wrong is said.
cluster_down() { cl_teardown 2>/dev/null; }
cl_teardown() {
  local node pid key i ns
  for node in "${CL_NODES[@]}"; do
    [ -n "${CL_HOLDER[$node]:-}" ] || continue
    cl_kill_pods "$node"
    for pid in $(cl_node_pids "$node"); do kill -9 "$pid" 2>/dev/null || true; done
  done
  # Everything is thrown away: no component needs to stop cleanly (and
  # kube-apiserver alone takes over 10 s to).
  for key in "${!CL_PID[@]}"; do kill -9 "${CL_PID[$key]}" 2>/dev/null || true; done
  for key in "${!CL_PID[@]}"; do cl_stop "$key"; done
  for node in "${CL_NODES[@]}"; do
    if [ -n "${CL_HOLDER[$node]:-}" ]; then
      kill -9 "${CL_HOLDER[$node]}" 2>/dev/null || true
      wait "${CL_HOLDER[$node]}" 2>/dev/null || true
    fi
    cl_remove_cgroups "$node"
  done
  CL_HOLDER=()
  # The script's own background loops (probes, watches), once the nodes'
  # processes were found by their mount namespace: none may outlive it,
  # nor hold the cluster lock (their children close it: {CL_LOCK}>&-).
  for pid in $(jobs -p); do kill -9 "$pid" 2>/dev/null || true; done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$CL_ID-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  for ((i = ${#CL_MADE_DIRS[@]} - 1; i >= 0; i--)); do rmdir "${CL_MADE_DIRS[$i]}" 2>/dev/null || true; done
  CL_MADE_DIRS=()
  if [ -n "$CL_DIR" ]; then
    cl_podman_clean
    findmnt -rn -o TARGET | grep "^$CL_DIR/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
    if [ -n "${CL_KEEP_LOGS:-}" ]; then
      mkdir -p "$CL_KEEP_LOGS" && cp -r "$CL_DIR/logs/." "$CL_KEEP_LOGS/" 2>/dev/null || true
    fi
    rm -rf "$CL_DIR"
  fi
  CL_DIR=""
}

# cl_netns NAME IFNAME ADDRESS ADDRESS6: a namespace on the lan. Its IPv6
# address skips DAD (nodad): the lan is ours, and kubelet and the API
# server bind to it at once.
cl_netns() {
  ip netns add "$CL_ID-$1"
  ip -n "$CL_ID-$1" link set lo up
  ip -n "$CL_ID-lan" link add "$1" type veth peer name "$2" netns "$CL_ID-$1"
  ip -n "$CL_ID-lan" link set "$1" master lan0 up
  ip -n "$CL_ID-$1" addr add "$3/16" dev "$2"
  ip -n "$CL_ID-$1" addr add "$4/64" dev "$2" nodad
  ip -n "$CL_ID-$1" link set "$2" up
  ip -n "$CL_ID-$1" route add default via 192.168.0.1
  ip -n "$CL_ID-$1" -6 route add default via fd00:c0a8::1
}

cl_kubeconfig() { # cl_kubeconfig TOKEN: a kubeconfig for the API server with that bearer token
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: https://$CL_CP_IP:6443
    certificate-authority: $CL_DIR/apiserver/apiserver.crt
users:
- name: user
  user:
    token: $1
contexts:
- name: sandbox
  context: {cluster: sandbox, user: user}
current-context: sandbox
EOF
}

# cl_lan_resolver: the lan's DNS resolver at 192.168.0.1 and fd00:c0a8::1
# (every node's resolv.conf names it, and the cluster's DNS forwards to it):
# CoreDNS answering for lan.example, gateway.lan.example being the router.
cl_lan_resolver() {
  mkdir -p "$CL_DIR/lan-dns"
  cat >"$CL_DIR/lan-dns/Corefile" <<EOF
lan.example:53 {
  bind 192.168.0.1 fd00:c0a8::1
  hosts {
    192.168.0.1 gateway.lan.example
    fd00:c0a8::1 gateway.lan.example
  }
  errors
}
EOF
  cl_spawn lan/coredns ip netns exec "$CL_ID-lan" "$CL_BIN/coredns" -conf "$CL_DIR/lan-dns/Corefile"
}

# cl_coredns_image ARCHIVE: the cluster DNS's image (CL_DNS_IMAGE): CoreDNS
# alone, from scratch; saved as an OCI archive.
cl_coredns_image() {
  local d=$CL_DIR/coredns-image
  mkdir -p "$d"
  cp "$CL_BIN/coredns" "$d/coredns"
  printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' >"$d/Containerfile"
  # shellcheck disable=SC2046
  podman $(cl_podman_opts) --cgroup-manager cgroupfs --events-backend file build -q -t "$CL_DNS_IMAGE" "$d" >/dev/null
  # shellcheck disable=SC2046
  podman $(cl_podman_opts) save -q --format oci-archive -o "$1" "$CL_DNS_IMAGE"
}

# cl_coredns_manifest: the cluster's DNS as kubeadm deploys it: CoreDNS's
# ServiceAccount and the RBAC it needs, its Corefile, a Deployment of two
# (one per node) on the pod network (here: macvlan pods, reaching the API
# server through the kubernetes Service), and the kube-dns Service at
# CL_DNS_IPS, dual-stack.
cl_coredns_manifest() {
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
           lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }
        prometheus :9153
        forward . /etc/resolv.conf
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {k8s-app: kube-dns}}}
      containers:
      - name: coredns
        image: $CL_DNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        - {name: metrics, containerPort: 9153, protocol: TCP}
        livenessProbe: {httpGet: {path: /health, port: 8080}, initialDelaySeconds: 60, timeoutSeconds: 5, failureThreshold: 5}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  selector: {k8s-app: kube-dns}
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: ${CL_DNS_IPS[0]}
  clusterIPs: [${CL_DNS_IPS[0]}, ${CL_DNS_IPS[1]}]
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
EOF
}

cl_api_ready() { cl_kubectl get --raw /readyz >/dev/null 2>&1; }

cl_control_plane_up() {
  local cp=(nsenter --net="/var/run/netns/$CL_ID-cp")
  openssl genrsa -out "$CL_DIR/sa.key" 2048 2>/dev/null
  openssl rsa -in "$CL_DIR/sa.key" -pubout -out "$CL_DIR/sa.pub" 2>/dev/null
  # Bearer tokens: the admin (control-plane components, kube-proxy, the
  # test) and one per kubelet, authorized as nodes are (Node authorizer).
  {
    echo "admin-$CL_ID,admin,admin,system:masters"
    local node
    for node in "${CL_NODES[@]}"; do echo "kubelet-$node-$CL_ID,system:node:$node,$node,system:nodes"; done
  } >"$CL_DIR/tokens.csv"
  cl_spawn cp/etcd "${cp[@]}" "$CL_BIN/etcd" --name sandbox --data-dir "$CL_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster sandbox=http://127.0.0.1:2380 --log-level warn
  wait_for 120 "etcd to answer on 127.0.0.1:2379" matches '"health":"true"' \
    "${cp[@]}" curl -s --max-time 5 http://127.0.0.1:2379/health || return 1
  cl_spawn cp/kube-apiserver "${cp[@]}" "$CL_BIN/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 --bind-address "$CL_CP_IP" --advertise-address "$CL_CP_IP" \
    --secure-port 6443 --cert-dir "$CL_DIR/apiserver" --token-auth-file "$CL_DIR/tokens.csv" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --service-account-key-file "$CL_DIR/sa.pub" --service-account-signing-key-file "$CL_DIR/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$CL_SERVICE_CIDR,$CL_SERVICE_CIDR6" --enable-admission-plugins NodeRestriction \
    --kubelet-preferred-address-types InternalIP
  cl_kubeconfig "admin-$CL_ID" >"$CL_DIR/admin.kubeconfig"
  wait_for 180 "kube-apiserver to be ready on $CL_CP_IP:6443" cl_api_ready || return 1
  cl_spawn cp/kube-controller-manager "${cp[@]}" "$CL_BIN/kube-controller-manager" \
    --kubeconfig "$CL_DIR/admin.kubeconfig" --leader-elect=false \
    --service-account-private-key-file "$CL_DIR/sa.key" --root-ca-file "$CL_DIR/apiserver/apiserver.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range "$CL_SERVICE_CIDR,$CL_SERVICE_CIDR6" \
    --bind-address 127.0.0.1 --secure-port 10257
  cl_spawn cp/kube-scheduler "${cp[@]}" "$CL_BIN/kube-scheduler" \
    --kubeconfig "$CL_DIR/admin.kubeconfig" --leader-elect=false --bind-address 127.0.0.1 --secure-port 10259
}

# cl_node_namespace NODE: the node's mount namespace, held by a sleeping
# process; returns once its mounts are in place.
cl_node_namespace() {
  local node=$1 d=$CL_DIR/$1 m p h root
  mkdir -p "$d/sysctl"
  for m in "${CL_NODE_MOUNTS[@]}"; do
    mkdir -p "$d/mnt$m"
    if [ ! -d "$m" ]; then
      p=$m
      while [ ! -d "$(dirname "$p")" ]; do p=$(dirname "$p"); done
      mkdir -p "$m"
      CL_MADE_DIRS+=("$p")
    fi
  done
  for p in "${!CL_KUBELET_SYSCTLS[@]}"; do echo "${CL_KUBELET_SYSCTLS[$p]}" >"$d/sysctl/${p//\//.}"; done
  root=$(cl_cgroup_root "$node")
  for h in $(cl_hierarchies); do
    mkdir -p "$h$root"
    # v1: a new cpuset cgroup starts with no CPUs and no memory nodes.
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h$root/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$root/cpuset.mems"
    fi
    # v2: the kubelet's cgroups below need the controllers delegated.
    if [ -f "$h/cgroup.subtree_control" ]; then
      for c in $(cat "$h/cgroup.subtree_control"); do echo "+$c" >"$h$root/cgroup.subtree_control" 2>/dev/null || true; done
    fi
  done
  # Private first, so that nothing propagates to or from the machine; then
  # shared within the node, as a node's / is (containerd's HostToContainer
  # volumes need a shared or slave source).
  nsenter --net="/var/run/netns/$CL_ID-$node" unshare --mount --propagation private sh -c '
    d=$1; shift
    mount --make-rshared /
    for m in "$@"; do mount --bind "$d/mnt$m" "$m"; done
    for f in "$d"/sysctl/*; do mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"; done
    touch "$d/mounted"
    exec sleep 2147483647' sh "$d" "${CL_NODE_MOUNTS[@]}" >>"$(cl_log "$node-holder")" 2>&1 {CL_LOCK}>&- &
  CL_HOLDER[$node]=$!
  wait_for 60 "$node's mount namespace" test -f "$d/mounted"
}

cl_containerd_config() {
  cat <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.nri.v1.nri"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "native"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$CL_POD_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    # Pods of RuntimeClass "dockin" take their network from the multinic
    # conflist in a directory of their own.
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.dockin]
      runtime_type = "io.containerd.runc.v2"
      cni_conf_dir = "/etc/cni/net.d/dockin"
      cni_max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
EOF
}

# cl_containerd_start NODE / cl_containerd_stop NODE (its shims and pods stay,
# as on a node whose containerd restarts).
cl_containerd_start() {
  cl_spawn_in_node "$1/containerd" "$1" env PATH="$CL_BIN:$PATH" sh -c 'ulimit -n 1024 -u 4096; exec containerd --config "$1"' sh "$CL_DIR/$1/containerd.toml"
  wait_for 120 "containerd on $1 to answer" in_node "$1" "$CL_BIN/ctr" --address /run/containerd/containerd.sock version >/dev/null 2>&1
}
cl_containerd_stop() { cl_stop "$1/containerd"; }

cl_kubelet_config() { # cl_kubelet_config NODE
  cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $(cl_cgroup_root "$1")
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: ${CL_NODE_IP[$1]}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
clusterDNS: [${CL_DNS_IPS[0]}, ${CL_DNS_IPS[1]}]
clusterDomain: cluster.local
resolvConf: $CL_DIR/resolv.conf
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
fileCheckFrequency: 5s
EOF
}

cl_kubelet_start() {
  cl_spawn_in_node "$1/kubelet" "$1" env PATH="$CL_BIN:$PATH" "$CL_BIN/kubelet" --config "$CL_DIR/$1/kubelet.yaml" \
    --kubeconfig "$CL_DIR/$1/kubelet.kubeconfig" --hostname-override "$1" --node-ip "${CL_NODE_IP[$1]},${CL_NODE_IP6[$1]}" \
    --cert-dir "$CL_DIR/$1/kubelet-pki" --v 1
}
cl_kubelet_stop() { cl_stop "$1/kubelet"; }

# cl_kube_proxy_start NODE MODE [CLUSTER_CIDRS]: kube-proxy in iptables or
# nftables mode (CLUSTER_CIDRS, if given, names a range of each family);
# conntrack's machine-wide limits are left alone.
cl_kube_proxy_start() {
  cat >"$CL_DIR/$1/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CL_DIR/admin.kubeconfig}
hostnameOverride: $1
mode: $2
clusterCIDR: "${3:-}"
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
  cl_spawn_in_node "$1/kube-proxy" "$1" "$CL_BIN/kube-proxy" --config "$CL_DIR/$1/kube-proxy.yaml"
}
# cl_kube_proxy_stop NODE: stops it and removes its rules (kube-proxy --cleanup).
cl_kube_proxy_stop() {
  cl_stop "$1/kube-proxy"
  in_node "$1" "$CL_BIN/kube-proxy" --cleanup >>"$(cl_log "$1-kube-proxy")" 2>&1 || true
}

cl_node_up() { # cl_node_up NODE: a node with containerd and kubelet (no kube-proxy yet)
  local node=$1
  cl_netns "$node" eno1 "${CL_NODE_IP[$node]}" "${CL_NODE_IP6[$node]}"
  # A router, as a node is; conntrack's settings stay the kernel's defaults
  # (nf_conntrack_tcp_be_liberal 0: kube-proxy's iptables mode drops what
  # conntrack finds INVALID, and the Services must work so).
  ip netns exec "$CL_ID-$node" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
  cl_node_namespace "$node"
  cl_containerd_config >"$CL_DIR/$node/containerd.toml"
  cl_kubelet_config "$node" >"$CL_DIR/$node/kubelet.yaml"
  cl_kubeconfig "kubelet-$node-$CL_ID" >"$CL_DIR/$node/kubelet.kubeconfig"
  cl_containerd_start "$node"
  cl_kubelet_start "$node"
}

# cl_import NODE ARCHIVE: an image archive into NODE's containerd (no registry).
cl_import() {
  in_node "$1" "$CL_BIN/ctr" --address /run/containerd/containerd.sock -n k8s.io images import --local \
    --snapshotter native "$2" >/dev/null 2>>"$(cl_log "$1-ctr")"
}

cl_podman_opts() { echo "--root $CL_DIR/podman --runroot $CL_DIR/podman-run --tmpdir $CL_DIR --storage-driver vfs"; }

# cl_busybox_image ARCHIVE: the pods' image (CL_POD_IMAGE), from scratch: the static
# busybox (the sandbox's sleeping PID 1 and the pods' web server, serving
# /www) and the network probe (internal/testworkload/probe); saved as an
# OCI archive.
cl_busybox_image() {
  local d=$CL_DIR/image
  mkdir -p "$d/bin" "$d/www"
  cp /bin/busybox "$d/bin/busybox"
  CGO_ENABLED=0 go build -trimpath -o "$d/bin/probe" ./internal/testworkload/probe
  echo "hello from a k8s pod" >"$d/www/index.html"
  printf 'FROM scratch\nCOPY bin /bin\nCOPY www /www\nENTRYPOINT ["/bin/busybox", "sleep", "2147483647"]\n' >"$d/Containerfile"
  # shellcheck disable=SC2046
  podman $(cl_podman_opts) --cgroup-manager cgroupfs --events-backend file build -q -t "$CL_POD_IMAGE" "$d" >/dev/null
  # shellcheck disable=SC2046
  podman $(cl_podman_opts) save -q --format oci-archive -o "$1" "$CL_POD_IMAGE"
}

# cl_plugins_image TAG ARCHIVE: the installer image (scripts/image.sh) as
# CL_PLUGINS_IMAGE:TAG, its plugins answering VERSION TAG; saved as an OCI
# archive.
CL_PLUGINS_IMAGE=localhost/cnichain-plugins
cl_plugins_image() {
  VERSION="$1" LDFLAGS="-X github.com/cnichain/plugins/pkg/buildinfo.Version=$1" \
    IMAGE="$CL_PLUGINS_IMAGE:$1" IMAGE_ARCHIVE="$2" PODMAN_OPTS="$(cl_podman_opts)" scripts/image.sh >/dev/null
}

# cl_daemonset TAG CONFLIST [ARG...]: deploy/daemonset.yaml as a user
# applies it (its ServiceAccount and RBAC as they are, then the DaemonSet),
# with image tag TAG, the ConfigMap cnichain-conflist mounted at /config,
# and CONFLIST (a key of it; $(NODE_NAME) is the node's name) installed as
# 30-lan.conflist; ARGs go to cnichain-install too.
cl_daemonset() {
  local tag=$1 conflist=$2 args
  shift 2
  args=$(jq -cn --arg c "-conflist=/config/$conflist" --arg more "$(printf '%s\n' "$@")" \
    '["-agent", "-iptables-root=/host", $c, "-conflist-name=30-lan.conflist"] + ($more | split("\n") | map(select(. != "")))')
  # kubectl patch --local would patch every document of the file: only the
  # DaemonSet's is.
  rm -f "$CL_DIR"/manifest.*
  awk -v out="$CL_DIR/manifest" '/^---$/ {n++; next} {print > (out "." n + 0)}' deploy/daemonset.yaml
  local doc daemonset=""
  for doc in "$CL_DIR"/manifest.*; do
    if grep -q '^kind: DaemonSet$' "$doc"; then
      daemonset=$doc
    else
      cat "$doc"
      echo ---
    fi
  done
  [ -n "$daemonset" ] || { echo "deploy/daemonset.yaml holds no DaemonSet" >&2; return 1; }
  cl_kubectl patch --local -o yaml -f "$daemonset" --type strategic -p "$(cat <<PATCH
{"spec":{"template":{"spec":{
  "containers":[{"name":"install","image":"$CL_PLUGINS_IMAGE:$tag","args":$args,
    "env":[{"name":"NODE_NAME","valueFrom":{"fieldRef":{"fieldPath":"spec.nodeName"}}}],
    "volumeMounts":[{"name":"conflist","mountPath":"/config","readOnly":true}]}],
  "volumes":[{"name":"conflist","configMap":{"name":"cnichain-conflist"}}]}}}}
PATCH
)"
}

# cl_rolled_out SECONDS: the DaemonSet's pods are all updated and Ready; if
# not, says what its pods are doing.
cl_rolled_out() {
  cl_kubectl -n kube-system rollout status daemonset/cnichain-plugins --timeout "$1s" >/dev/null && return 0
  echo "the DaemonSet's pods, after ${1}s:" >&2
  cl_kubectl -n kube-system get pods -o wide >&2
  cl_kubectl -n kube-system get pods -o 'jsonpath={range .items[*]}{.metadata.name}: {.status.containerStatuses[0].lastState}{"\n"}{end}' >&2
  cl_kubectl -n kube-system get events --sort-by .lastTimestamp >&2
  return 1
}

cl_podman_clean() { # the images' build storage, once they are saved
  # shellcheck disable=SC2046
  [ ! -d "$CL_DIR/podman" ] || podman $(cl_podman_opts) rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$CL_DIR/podman" "$CL_DIR/podman-run"
}

# cl_provision_reference_plugins NODE BIN: what node provisioning installs
# (a kubernetes-cni package): the reference plugins the chains and
# containerd use, from BIN.
cl_provision_reference_plugins() {
  local p
  for p in macvlan host-local loopback portmap bridge; do cp "$2/$p" "$CL_DIR/$1/mnt/opt/cni/bin/"; done
}

# cl_conflist NODE PORT_MAPPER [ipv4]: the whole chain on the lan for NODE's
# pods: macvlan with host-local handing out addresses of both families from
# ranges of the node's (192.168.10.x and fd00:c0a8::10:x on node-a,
# 192.168.11.x and fd00:c0a8::11:x on node-b), macvlan-host-route with the
# Service ranges through the node (viaNode), then PORT_MAPPER (portmap-lite,
# or the reference portmap); with "ipv4", IPv4 alone (the bench's measure
# of what IPv6 costs a pod's start). host-local gives every range a gateway
# (its subnet's first address when none is named), and macvlan waits for
# the DAD of an IPv6 address that has one (about 1.5-2 s of each ADD): no
# conflist of macvlan and host-local avoids that wait.
cl_conflist() {
  local n v6range="" v6route="" v6via=""
  n=$((10 + $(cl_node_index "$1")))
  if [ "${3:-}" != ipv4 ]; then
    v6range=$(printf ',\n            [{"subnet":"fd00:c0a8::/64","rangeStart":"fd00:c0a8::%s:10","rangeEnd":"fd00:c0a8::%s:250","gateway":"fd00:c0a8::1"}]' "$n" "$n")
    v6route=',{"dst":"::/0"}'
    v6via=",\"$CL_SERVICE_CIDR6\""
  fi
  cat <<CONF
{"cniVersion":"1.0.0","name":"lan","plugins":[
 {"type":"macvlan","master":"eno1","mode":"bridge",
  "ipam":{"type":"host-local","ranges":[
            [{"subnet":"192.168.0.0/16","rangeStart":"192.168.$n.10","rangeEnd":"192.168.$n.250","gateway":"192.168.0.1"}]$v6range],
          "routes":[{"dst":"0.0.0.0/0"}$v6route]}},
 {"type":"macvlan-host-route","master":"eno1","viaNode":["$CL_SERVICE_CIDR"$v6via]},
 {"type":"$2","capabilities":{"portMappings":true}}]}
CONF
}
CL_POD_CIDR=192.168.10.0/23      # both nodes' ranges
CL_POD_CIDR6=fd00:c0a8::10:0/111 # ditto

# cl_hostport_pod NAME NODE HOSTPORT LABEL: a pod's manifest: busybox httpd
# on port 80, reached at NODE's HOSTPORT; gone at once when deleted (a
# busybox PID 1 ignores SIGTERM).
cl_hostport_pod() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: {$4}}
spec:
  nodeName: $2
  terminationGracePeriodSeconds: 0
  containers:
  - name: web
    image: $CL_POD_IMAGE
    imagePullPolicy: Never
    command: [/bin/busybox, httpd, -f, -p, "80", -h, /www]
    ports: [{containerPort: 80, hostPort: $3}]
EOF
}
cl_node_index() { # cl_node_index NODE: its place in CL_NODES, from 0
  local i
  for i in "${!CL_NODES[@]}"; do [ "${CL_NODES[$i]}" = "$1" ] && echo "$i" && return 0; done
  return 1
}

cl_node_ready() {
  [ "$(cl_kubectl get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

cl_node_registered() { cl_kubectl get node "$1" >/dev/null 2>&1; }

# cluster_up: control plane and both nodes (NotReady until a CNI conflist
# lands in their /etc/cni/net.d).
cluster_up() {
  scripts/ensure-tools.sh podman runc nft openssl
  # One cluster at a time per machine: the nodes' mount points on the
  # machine's tree are shared, and one run's removal of a mount point it
  # made would take another's mount with it (and two builds of the
  # components would write one cache).
  exec {CL_LOCK}>/tmp/cnichain-cluster.lock
  wait_for 1800 "another run's cluster to go (/tmp/cnichain-cluster.lock)" flock -n "$CL_LOCK"
  CL_BIN=$(scripts/k8s-build.sh)/bin
  trap 'cluster_down' EXIT
  trap 'cluster_down; exit 130' INT TERM
  CL_DIR=$(mktemp -d /tmp/cnichain-k8s.XXXXXX)
  mkdir -p "$CL_DIR/logs"
  echo "nameserver 192.168.0.1" >"$CL_DIR/resolv.conf"
  ip netns add "$CL_ID-lan"
  ip -n "$CL_ID-lan" link set lo up
  ip -n "$CL_ID-lan" link add lan0 type bridge
  ip -n "$CL_ID-lan" addr add 192.168.0.1/16 dev lan0
  ip -n "$CL_ID-lan" addr add fd00:c0a8::1/64 dev lan0 nodad
  ip -n "$CL_ID-lan" link set lan0 up
  cl_lan_resolver
  cl_netns cp eth0 "$CL_CP_IP" "$CL_CP_IP6"
  cl_control_plane_up || return 1
  local node
  for node in "${CL_NODES[@]}"; do cl_node_up "$node" || return 1; done
  for node in "${CL_NODES[@]}"; do
    wait_for 180 "$node to register with the API server" cl_node_registered "$node" || return 1
  done
}
