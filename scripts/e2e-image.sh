#!/usr/bin/env bash
# The installer image under podman, as a DaemonSet would run it: two
# temporary directories stand for the node's /opt/cni/bin and
# /etc/cni/net.d. The plugins land and run; a second run changes nothing;
# a plugin binary being executed is replaced without harm. podman's
# storage is a temporary root, removed afterwards with everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh podman runc
. scripts/e2e-lib.sh
T=$(mktemp -d /tmp/cnichain-image.XXXXXX)
SLEEPER=""
cleanup() {
  [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null || true
  podman --root "$T/root" --runroot "$T/run" --storage-driver vfs rmi -a -f >/dev/null 2>&1 || true
  findmnt -rn -o TARGET | grep "^$T/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
  rm -rf "$T"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
export PODMAN_OPTS="--root $T/root --runroot $T/run --tmpdir $T --storage-driver vfs"
IMAGE=localhost/cnichain-plugins:e2e scripts/image.sh >/dev/null
BIN=$T/node/opt/cni/bin NETD=$T/node/etc/cni/net.d
mkdir -p "$BIN" "$NETD"
install_run() { # install_run OUT: one run of the image, its output in OUT
  # shellcheck disable=SC2086
  podman $PODMAN_OPTS --cgroup-manager cgroupfs --events-backend file run --rm --runtime runc --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
    -v "$BIN:/host/opt/cni/bin" -v "$NETD:/host/etc/cni/net.d" -v "$(pwd)/net.d:/config:ro" \
    localhost/cnichain-plugins:e2e -conflist /config/30-macvlan-hostport.conflist > "$1"
}
plugins=$(ls plugins)
all_landed() {
  local p
  for p in $plugins; do [ -x "$BIN/$p" ] || return 1; done
  [ -f "$NETD/30-macvlan-hostport.conflist" ]
}
all_answer_version() {
  local p
  for p in $plugins; do CNI_COMMAND=VERSION "$BIN/$p" </dev/null | jq -e '.supportedVersions | index("1.1.0")' >/dev/null || return 1; done
}
only() { # only WORD FILE: every line of FILE starts with WORD
  [ -s "$2" ] && ! grep -qv "^$1 " "$2"
}
echo "== the installer image under podman $(podman --version | awk '{print $3}')"
install_run "$T/first"
check "image: every plugin and the conflist land in the node's directories" all_landed
check "image: the first run writes every file" only written "$T/first"
check "image: the installed plugins answer VERSION" all_answer_version
inodes() { stat -c '%n %i %Y' "$BIN"/* "$NETD"/*; }
before=$(inodes)
install_run "$T/second"
check "image: a second run changes nothing" only unchanged "$T/second"
check "image: a second run leaves every file's inode and mtime" test "$before" = "$(inodes)"

# A plugin binary in use: a long-running process executes the installed
# file (a copy of sleep put in its place) while the installer replaces it.
cp "$(command -v sleep)" "$BIN/portmap-lite"
"$BIN/portmap-lite" 60 &
SLEEPER=$!
install_run "$T/third"
check "image: a binary in use is replaced" grep -q "^written $BIN/portmap-lite\$\|^written /host/opt/cni/bin/portmap-lite\$" "$T/third"
check "image: the process running the old binary is untouched" kill -0 "$SLEEPER"
check "image: the replaced binary is the plugin" sh -c "CNI_COMMAND=VERSION '$BIN/portmap-lite' </dev/null | jq -e .supportedVersions >/dev/null"
check "image: no temporary file is left behind" test -z "$(find "$BIN" "$NETD" -name '.*')"

report
