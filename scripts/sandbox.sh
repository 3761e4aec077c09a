# shellcheck shell=bash
# A throw-away topology of network namespaces for the demo and benchmarks;
# source it, call sandbox_up, and everything is removed on exit, on failure
# and on Ctrl-C. The Go twin for tests is pkg/sandbox: same names, same
# addresses.
#
#   node  (SB_NODE): eno1 192.168.0.5/16 fd00:c0a8::5/64, where plugins run
#   lan   (SB_LAN):  eth0 192.168.0.1/16 fd00:c0a8::1/64, an outside host
#   pods  (sandbox_pod NAME): loopback only, until a plugin wires them
#
# Plugins and cnitool run inside the node namespace; cnitool also gets a
# private mount namespace whose /var/lib/cni is $SB_DIR/var-lib-cni, so its
# cache and host-local's leases stay in the sandbox.

SB_ID="cnichain-$$"
SB_NODE="$SB_ID-node"
SB_LAN="$SB_ID-lan"
SB_DIR=""
SB_BIN="${SB_BIN:-$(pwd)/bin}"

sandbox_down() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$SB_ID-" || true); do
    # Processes the demo left in its own namespaces (a server in a pod).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  [ -n "$SB_DIR" ] && rm -rf "$SB_DIR"
  SB_DIR=""
}

sandbox_up() {
  trap 'sandbox_down' EXIT
  trap 'sandbox_down; exit 130' INT TERM
  SB_DIR=$(mktemp -d /tmp/cnichain-sandbox.XXXXXX)
  mkdir -p "$SB_DIR/var-lib-cni" /var/lib/cni
  ip netns add "$SB_NODE"
  ip netns add "$SB_LAN"
  ip -n "$SB_NODE" link set lo up
  ip -n "$SB_LAN" link set lo up
  ip -n "$SB_NODE" link add eno1 type veth peer name eth0 netns "$SB_LAN"
  ip -n "$SB_NODE" addr add 192.168.0.5/16 dev eno1
  ip -n "$SB_NODE" addr add fd00:c0a8::5/64 dev eno1 nodad
  ip -n "$SB_LAN" addr add 192.168.0.1/16 dev eth0
  ip -n "$SB_LAN" addr add fd00:c0a8::1/64 dev eth0 nodad
  ip -n "$SB_NODE" link set eno1 up
  ip -n "$SB_LAN" link set eth0 up
}

# sandbox_pod NAME: creates a pod namespace and prints its path.
sandbox_pod() {
  ip netns add "$SB_ID-$1"
  ip -n "$SB_ID-$1" link set lo up
  echo "/var/run/netns/$SB_ID-$1"
}

# in_ns NAME CMD...: runs CMD in the sandbox namespace NAME (node, lan, or a pod).
in_ns() {
  local name=$1
  shift
  ip netns exec "$SB_ID-$name" "$@"
}

# sandbox_cnitool CONFDIR CMD...: cnitool, as the source documents run it,
# inside the node namespace with a private /var/lib/cni. Extra environment
# (CAP_ARGS, CNI_ARGS) is inherited from the caller.
sandbox_cnitool() {
  local confdir=$1
  shift
  ip netns exec "$SB_NODE" unshare --mount --propagation private \
    sh -c 'mount --bind "$1" /var/lib/cni && shift && exec "$@"' sh "$SB_DIR/var-lib-cni" \
    env CNI_PATH="$SB_BIN" NETCONFPATH="$confdir" "$SB_BIN/cnitool" "$@"
}
