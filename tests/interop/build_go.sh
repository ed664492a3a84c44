#!/usr/bin/env bash
# build_go.sh OUT SRC_DIR WORK: builds a Go program of tests/interop or
# bench/go offline, in GOPATH mode, against Debian's packaged Go sources
# (/usr/share/gocode: golang-github-containerd-ttrpc-dev and its
# dependencies). Nothing is fetched: GOPROXY=off, GO111MODULE=off. GOCACHE
# lives in the build tree (CI has no HOME).
set -euo pipefail
out=$1 src=$2 work=$3
mkdir -p "$work/gopath" "$work/gocache"
cd "$src"
GOPATH="$work/gopath:/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS= \
	GOCACHE="$work/gocache" go build -o "$out" ./*.go
