#!/bin/sh
# Regenerates the Go code for every .proto file under api/proto, with pinned tool versions
# fetched from the Go module proxy (the first run builds them; later runs use the Go cache).
# Usage: api/proto/generate.sh   (from anywhere), or: go generate ./api/proto/...
set -eu
cd "$(dirname "$0")"
BUF="go run github.com/bufbuild/buf/cmd/buf@v1.75.0"
$BUF format -w
$BUF lint
$BUF generate
