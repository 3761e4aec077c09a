#!/usr/bin/env bash
# Builds, once per machine, the real Kubernetes components the cluster test
# runs (scripts/e2e-k8s.sh), from the Go module proxy into a cache outside
# our go.mod, as crictl is: kubelet, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy and kubectl from k8s.io/kubernetes; etcd from
# go.etcd.io/etcd/server (its etcdmain behind a two-line main); containerd,
# its runc shim and ctr from github.com/containerd/containerd/v2; CoreDNS
# (the cluster's DNS, as kubeadm deploys it) from github.com/coredns/coredns.
# Prints the directory that holds them all (bin/ below it).
#
# k8s.io/kubernetes is not meant to be required by other modules: its
# go.mod replaces every staging module (k8s.io/api, k8s.io/client-go, ...)
# with a directory of its repository. A module of our own that requires it
# replaces each with the same release published on its own (v0.<minor>.<patch>).
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
CONTAINERD_VERSION=v2.4.2
COREDNS_VERSION=v1.15.0

cache="${XDG_CACHE_HOME:-$HOME/.cache}/cnichain/cluster-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-containerd-$CONTAINERD_VERSION"
bin=$cache/bin
components=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd containerd containerd-shim-runc-v2 ctr)
# CoreDNS came later: built beside the others into the same cache (whose
# name it leaves alone, so a warm cache is not built again), its version
# kept in a file of its own.
coredns_stamp=$bin/.coredns-version

built() {
  local c
  for c in "${components[@]}"; do [ -x "$bin/$c" ] || return 1; done
}
coredns_built() { [ -x "$bin/coredns" ] && [ "$(cat "$coredns_stamp" 2>/dev/null)" = "$COREDNS_VERSION" ]; }
if built && coredns_built; then
  echo "$cache"
  exit 0
fi

start=$SECONDS
mkdir -p "$bin"
export GOFLAGS=-mod=mod CGO_ENABLED=0

build_coredns() {
  # Its go.mod has no replace directives either.
  echo "k8s-build: building CoreDNS $COREDNS_VERSION (once; ~3 min)" >&2
  (cd / && GOBIN="$bin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION")
  echo "$COREDNS_VERSION" >"$coredns_stamp"
}
if built; then
  build_coredns
  echo "k8s-build: built in $((SECONDS - start)) s" >&2
  echo "$cache"
  exit 0
fi

# Kubernetes.
src=$cache/src/kubernetes
mkdir -p "$src"
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap
  code-generator component-base component-helpers controller-manager cri-api cri-client cri-streaming
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller streaming)
staging_version=v0.${K8S_VERSION#v1.}
{
  echo "module cnichain.local/kubernetes-build"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  for m in "${staging[@]}"; do echo "replace k8s.io/$m => k8s.io/$m $staging_version"; done
  echo
  for c in kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl; do
    echo "tool k8s.io/kubernetes/cmd/$c"
  done
} > "$src/go.mod"
version_pkg=k8s.io/component-base/version
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ldflags="-s -w -X $version_pkg.gitVersion=$K8S_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor"
ldflags+=" -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
echo "k8s-build: building Kubernetes $K8S_VERSION (once; ~10 min on 2 cores)" >&2
(cd "$src" && go mod tidy >/dev/null 2>&1 || go mod tidy)
(cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$bin/" tool)

# etcd: a main of two lines around etcdmain, in a module of its own.
src=$cache/src/etcd
mkdir -p "$src"
cat > "$src/main.go" <<'EOF'
// etcd, as its own main package would start it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
printf 'module cnichain.local/etcd-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$src/go.mod"
echo "k8s-build: building etcd $ETCD_VERSION (once)" >&2
(cd "$src" && go mod tidy >/dev/null 2>&1 || go mod tidy)
(cd "$src" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)

# containerd: its go.mod has no replace directives, so go install takes it.
echo "k8s-build: building containerd $CONTAINERD_VERSION (once)" >&2
(cd / && GOBIN="$bin" go install -trimpath -ldflags "-s -w" \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION")

build_coredns
built && coredns_built || { echo "k8s-build: a component is missing from $bin after the build" >&2; exit 1; }
echo "k8s-build: built in $((SECONDS - start)) s" >&2
echo "$cache"
