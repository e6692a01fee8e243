#!/usr/bin/env bash
# Installs the pinned Go tools the smoke test and lint use: grpcurl, grpc-health-probe, buf.
# They land in $(go env GOPATH)/bin; nothing is downloaded but Go modules.
set -euo pipefail
tools=(
  github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
  github.com/grpc-ecosystem/grpc-health-probe@v0.4.62
  github.com/bufbuild/buf/cmd/buf@v1.75.0
)
bin="$(go env GOPATH)/bin"
stamp="$bin/.waiting-room-go-tools"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${tools[*]}" ]; then exit 0; fi
for tool in "${tools[@]}"; do
  echo "go_tools.sh: go install $tool"
  go install "$tool"
done
echo "${tools[*]}" >"$stamp"
