#!/usr/bin/env bash
# Installs the system tools the demo and the tests drive (ip, iptables, ping,
# nsenter/unshare, and curl and busybox's httpd for the demo's web server) on
# Debian or Ubuntu when they are missing; does nothing when they are all
# present.
set -euo pipefail

declare -A pkg_for=(
  [ip]=iproute2
  [iptables]=iptables
  [ip6tables]=iptables
  [iptables-restore]=iptables
  [ping]=iputils-ping
  [nsenter]=util-linux
  [unshare]=util-linux
  [curl]=curl
  [busybox]=busybox
)

missing=()
for tool in "${!pkg_for[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_for[$tool]}")
done
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
