#!/usr/bin/env bash
# kubesign test bed: installs the system packages the tests need and builds real
# Kubernetes binaries from the Go module proxy into a per-version cache outside
# the repository.
#
# Usage:
#   scripts/testbed.sh            # install packages, build binaries, print their paths
#   scripts/testbed.sh env        # same, but progress goes to stderr and stdout is
#                                 # only `export NAME=path` lines:
#                                 #   eval "$(scripts/testbed.sh env)"
#   scripts/testbed.sh paths      # print the binary paths without building anything
#
# Environment:
#   KUBE_VERSION     Kubernetes release to build (default below)
#   KUBESIGN_CACHE   cache root (default $HOME/.cache/kubesign); binaries land in
#                    $KUBESIGN_CACHE/k8s/<version>/bin/<name>
#   KUBE_COMPONENTS  space-separated k8s.io/kubernetes/cmd/* names to build
#                    (default "kubeadm")
#   GO               go binary (default: go on PATH, else /usr/local/go/bin/go)
#
# The Go module and build caches are Go's defaults (GOPATH/GOCACHE), also outside
# the repository. A second run with the binaries cached needs no network.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
KUBESIGN_CACHE="${KUBESIGN_CACHE:-${HOME}/.cache/kubesign}"
KUBE_COMPONENTS="${KUBE_COMPONENTS:-kubeadm}"
APT_PACKAGES=(openssl ca-certificates softhsm2 opensc libengine-pkcs11-openssl)

log() { echo "testbed: $*" >&2; }
die() { echo "testbed: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- apt packages
APT_UPDATED=0
ensure_apt_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
    sudo=(sudo)
  fi
  log "installing apt packages: ${missing[*]}"
  if [[ $APT_UPDATED -eq 0 ]]; then
    "${sudo[@]}" apt-get update -qq >&2
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# ---------------------------------------------------------------- Go toolchain
find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null; then command -v go; return; fi
  [[ -x /usr/local/go/bin/go ]] && { echo /usr/local/go/bin/go; return; }
  die "no Go toolchain found (set GO=/path/to/go)"
}

k8s_bin_dir() { echo "${KUBESIGN_CACHE}/k8s/$1/bin"; }

# Prepare (once per version) a wrapper module that requires k8s.io/kubernetes at
# $version and replaces every staging module with its v0.Y.Z release. The list is
# derived from k8s.io/kubernetes's own go.mod (`k8s.io/NAME => ./staging/src/k8s.io/NAME`).
prepare_k8s_wrapper() {
  local version="$1" go="$2"
  local wrap="${KUBESIGN_CACHE}/k8s/${version}/wrapper"
  if [[ -f "$wrap/.ready" ]]; then echo "$wrap"; return; fi

  [[ $version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "KUBE_VERSION must look like v1.Y.Z, got $version"
  local staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

  log "fetching k8s.io/kubernetes@${version} go.mod from the module proxy"
  local tmpd gomod
  tmpd="$(mktemp -d)"
  # `go mod download` needs a module context only for -json output paths; run it in a scratch dir.
  gomod="$(cd "$tmpd" && GOFLAGS=-mod=mod "$go" mod download -json "k8s.io/kubernetes@${version}" \
            | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  rm -rf "$tmpd"
  [[ -n "$gomod" && -f "$gomod" ]] || die "could not download k8s.io/kubernetes@${version}"

  local go_directive staging
  go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod" | head -1)"
  staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/src/k8s\.io/.*$#\1#p' "$gomod" | sort -u)"
  [[ -n "$staging" ]] || die "no staging replace lines found in $gomod"
  log "$(wc -l <<<"$staging") staging modules -> ${staging_version}"

  rm -rf "$wrap"
  mkdir -p "$wrap"
  {
    echo "module kubesign.test/k8s-wrapper"
    echo
    echo "go ${go_directive:-1.25.0}"
    echo
    echo "require k8s.io/kubernetes ${version}"
    echo
    echo "replace ("
    local m
    while read -r m; do echo "	${m} => ${m} ${staging_version}"; done <<<"$staging"
    echo ")"
  } >"$wrap/go.mod"
  touch "$wrap/.ready"
  echo "$wrap"
}

# build_k8s_cmd NAME VERSION: build k8s.io/kubernetes/cmd/NAME at VERSION into
# $KUBESIGN_CACHE/k8s/VERSION/bin/NAME (no-op when already there).
build_k8s_cmd() {
  local name="$1" version="$2"
  local bindir out
  bindir="$(k8s_bin_dir "$version")"
  out="${bindir}/${name}"
  if [[ -x "$out" ]]; then
    log "cache hit: $out"
    return 0
  fi

  local go wrap
  go="$(find_go)"
  wrap="$(prepare_k8s_wrapper "$version" "$go")"

  [[ $version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "bad version $version"
  local major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  local build_date info
  info="$("$go" env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/${version}.info"
  build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)"
  build_date="${build_date:-1970-01-01T00:00:00Z}"
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${version}"
    ldflags+=" -X ${pkg}.gitMajor=${major}"
    ldflags+=" -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean"
    ldflags+=" -X ${pkg}.buildDate=${build_date}"
  done

  log "building k8s.io/kubernetes/cmd/${name}@${version} (a cold build takes many minutes)"
  local start=$SECONDS
  mkdir -p "$bindir"
  (
    cd "$wrap"
    export GOFLAGS="-mod=mod" CGO_ENABLED=0
    "$go" get "k8s.io/kubernetes/cmd/${name}@${version}" >&2
    "$go" build -trimpath -ldflags "$ldflags" -o "${out}.tmp.$$" "k8s.io/kubernetes/cmd/${name}" >&2
  )
  mv -f "${out}.tmp.$$" "$out"
  log "built $out in $((SECONDS - start))s"
}

# Later additions (etcd: module go.etcd.io/etcd/server/v3, same wrapper-module idea,
# no staging replaces) belong next to build_k8s_cmd and get called from main.

env_name() { tr 'a-z-' 'A-Z_' <<<"$1"; }

print_paths() {
  local mode="$1" name bindir
  bindir="$(k8s_bin_dir "$KUBE_VERSION")"
  for name in $KUBE_COMPONENTS; do
    if [[ $mode == env ]]; then
      echo "export $(env_name "$name")=${bindir}/${name}"
    else
      echo "${bindir}/${name}"
    fi
  done
  if [[ $mode == env ]]; then
    echo "export KUBE_VERSION=${KUBE_VERSION}"
    echo "export KUBESIGN_K8S_BIN=${bindir}"
  fi
}

main() {
  local cmd="${1:-build}"
  case "$cmd" in
    build|env)
      ensure_apt_packages "${APT_PACKAGES[@]}"
      mkdir -p "${KUBESIGN_CACHE}/k8s/${KUBE_VERSION}"
      # Serialize concurrent runs on the same version.
      exec 9>"${KUBESIGN_CACHE}/k8s/${KUBE_VERSION}/.lock"
      flock 9
      local name
      for name in $KUBE_COMPONENTS; do build_k8s_cmd "$name" "$KUBE_VERSION"; done
      exec 9>&-
      if [[ $cmd == env ]]; then print_paths env; else print_paths plain; fi
      ;;
    paths) print_paths plain ;;
    -h|--help|help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (build|env|paths|help)" ;;
  esac
}

main "$@"
