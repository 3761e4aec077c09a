#!/usr/bin/env bash
# make image: the installer image of deploy/Containerfile (the plugins and
# cnichain-install, all static, on scratch), built with podman with no
# registry; tagged IMAGE and :latest, and saved as an OCI archive when
# IMAGE_ARCHIVE is set. PODMAN_OPTS (e.g. --root DIR) go to every podman.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh podman
IMAGE=${IMAGE:-localhost/cnichain-plugins:latest}
read -r -a opts <<<"${PODMAN_OPTS:-}"
stage=$(mktemp -d /tmp/cnichain-image-stage.XXXXXX)
trap 'rm -rf "$stage"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags "${LDFLAGS:-}" -o "$stage/bin/" ./plugins/...
CGO_ENABLED=0 go build -trimpath -ldflags "${LDFLAGS:-}" -o "$stage/" ./cmd/cnichain-install
cp LICENSE deploy/Containerfile "$stage/"
podman "${opts[@]}" build -q -t "$IMAGE" -t "${IMAGE%:*}:latest" -f "$stage/Containerfile" "$stage" >/dev/null
if [ -n "${IMAGE_ARCHIVE:-}" ]; then
  mkdir -p "$(dirname "$IMAGE_ARCHIVE")"
  rm -f "$IMAGE_ARCHIVE"
  podman "${opts[@]}" save -q --format oci-archive -o "$IMAGE_ARCHIVE" "$IMAGE"
  echo "$IMAGE_ARCHIVE"
fi
echo "$IMAGE"
