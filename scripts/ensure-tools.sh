#!/usr/bin/env bash
# Installs the system tools the demo and the tests drive (ip, iptables, ping,
# nsenter/unshare, curl, and a static busybox whose httpd serves the demo's
# pages and which runs alone in a container's empty rootfs) on Debian or
# Ubuntu when they are missing; does nothing when they are all present.
# Arguments name more tools, each installed from the package of its name
# (`ensure-tools.sh podman runc` for the runtime tests).
#
# A tool counts as present only when it can do what we use it for: Debian's
# `busybox` package ships a dynamically linked /bin/busybox that a container
# cannot run, so busybox is checked by running it in an empty root.
set -euo pipefail

declare -A pkg_for=(
  [ip]=iproute2
  [iptables]=iptables
  [ip6tables]=iptables
  [iptables-restore]=iptables
  [ping]=iputils-ping
  [nsenter]=util-linux
  [unshare]=util-linux
  [setpriv]=util-linux
  [chroot]=coreutils
  [curl]=curl
)

# Daemons whose package a running systemd would enable and start on this
# machine: installed only where no systemd runs (CI roots, containers),
# for the tests run them in their own namespaces only.
declare -A daemon_pkg=([firewalld]=firewalld [firewall-cmd]=firewalld [dbus-daemon]=dbus-daemon)
# Tools named on the command line whose package has another name.
declare -A pkg_of=([nft]=nftables)

for tool in "$@"; do
  if [ -n "${daemon_pkg[$tool]:-}" ]; then
    if [ -d /run/systemd/system ] && ! command -v "$tool" >/dev/null 2>&1; then
      echo "ensure-tools: not installing ${daemon_pkg[$tool]}: this machine's systemd would start it; the tests that need it say so and skip" >&2
      continue
    fi
    pkg_for[$tool]=${daemon_pkg[$tool]}
    continue
  fi
  pkg_for[$tool]=${pkg_of[$tool]:-$tool}
done

missing=()
for tool in "${!pkg_for[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_for[$tool]}")
done

# runs_alone BINARY: BINARY starts in an empty root (no libraries, no loader).
runs_alone() {
  local root rc=0
  [ -x "$1" ] || return 1
  root=$(mktemp -d)
  cp "$1" "$root/busybox"
  chroot "$root" /busybox true >/dev/null 2>&1 || rc=1
  rm -rf "$root"
  return $rc
}
# busybox-static replaces Debian's dynamic busybox (they conflict) and
# provides the same commands.
runs_alone /bin/busybox || missing+=(busybox-static)

[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: missing ${pkgs[*]} and no apt-get to install them; install them by hand" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-tools: missing ${pkgs[*]}; run as root to install them" >&2
  exit 1
fi
echo "ensure-tools: installing ${pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
if ! runs_alone /bin/busybox; then
  echo "ensure-tools: /bin/busybox still does not run in an empty root after installing busybox-static" >&2
  exit 1
fi
