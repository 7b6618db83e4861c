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
# `env` prints KUBEADM, KUBE_APISERVER, KUBE_CONTROLLER_MANAGER, KUBECTL (one per
# KUBE_COMPONENTS entry), ETCD, ETCDCTL (one per ETCD_COMPONENTS entry), KUBE_VERSION,
# KUBESIGN_K8S_BIN, ETCD_VERSION and KUBESIGN_ETCD_BIN.
#
# Environment:
#   KUBE_VERSION     Kubernetes release to build (default below)
#   KUBESIGN_CACHE   cache root (default $HOME/.cache/kubesign); binaries land in
#                    $KUBESIGN_CACHE/k8s/<version>/bin/<name>
#   KUBE_COMPONENTS  space-separated k8s.io/kubernetes/cmd/* names to build (default
#                    "kubeadm kube-apiserver kube-controller-manager kubectl")
#   ETCD_VERSION     etcd release to build (default below; Kubernetes 1.35 needs >= 3.5.13)
#   ETCD_COMPONENTS  "etcd" (module go.etcd.io/etcd/server/v3) and/or "etcdctl" (module
#                    go.etcd.io/etcd/etcdctl/v3), default "etcd etcdctl", "" for none;
#                    binaries land in $KUBESIGN_CACHE/etcd/<version>/bin/<name>
#   GO               go binary (default: go on PATH, else /usr/local/go/bin/go)
#
# The Go module and build caches are Go's defaults (GOPATH/GOCACHE), also outside
# the repository. A second run with the binaries cached needs no network.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
KUBESIGN_CACHE="${KUBESIGN_CACHE:-${HOME}/.cache/kubesign}"
KUBE_COMPONENTS="${KUBE_COMPONENTS-kubeadm kube-apiserver kube-controller-manager kubectl}"
# The newest v3.6.x on the Go module proxy when this was written (Kubernetes v1.35 ships 3.6.x).
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
ETCD_COMPONENTS="${ETCD_COMPONENTS-etcd etcdctl}"
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

# ---------------------------------------------------------------- etcd
etcd_bin_dir() { echo "${KUBESIGN_CACHE}/etcd/$1/bin"; }

# etcd_module NAME: the Go module whose root package is the `NAME` command.
etcd_module() {
  case "$1" in
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    etcdctl) echo "go.etcd.io/etcd/etcdctl/v3" ;;
    *) die "unknown etcd component '$1' (etcd|etcdctl)" ;;
  esac
}

# Prepare (once per version and command) a wrapper module that requires the command's
# module at $version. etcd's own replace directives (`../api` and so on) only apply
# inside the etcd repository; from a wrapper, the sibling modules resolve to the
# versions the command's go.mod requires (the same release), so no replaces are needed.
# One wrapper per command keeps each binary's dependency set exactly its own go.mod's.
prepare_etcd_wrapper() {
  local name="$1" version="$2" go="$3"
  local module wrap
  module="$(etcd_module "$name")"
  wrap="${KUBESIGN_CACHE}/etcd/${version}/wrapper-${name}"
  if [[ -f "$wrap/.ready" ]]; then echo "$wrap"; return; fi

  log "fetching ${module}@${version} go.mod from the module proxy"
  local tmpd gomod
  tmpd="$(mktemp -d)"
  gomod="$(cd "$tmpd" && GOFLAGS=-mod=mod "$go" mod download -json "${module}@${version}" \
            | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  rm -rf "$tmpd"
  [[ -n "$gomod" && -f "$gomod" ]] || die "could not download ${module}@${version}"
  local go_directive
  go_directive="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod" | head -1)"

  rm -rf "$wrap"
  mkdir -p "$wrap"
  {
    echo "module kubesign.test/${name}-wrapper"
    echo
    echo "go ${go_directive:-1.24}"
    echo
    echo "require ${module} ${version}"
  } >"$wrap/go.mod"
  touch "$wrap/.ready"
  echo "$wrap"
}

# build_etcd_cmd NAME VERSION: build etcd or etcdctl at VERSION into
# $KUBESIGN_CACHE/etcd/VERSION/bin/NAME (no-op when already there).
build_etcd_cmd() {
  local name="$1" version="$2"
  [[ $version =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "ETCD_VERSION must look like v3.Y.Z, got $version"
  local bindir out
  bindir="$(etcd_bin_dir "$version")"
  out="${bindir}/${name}"
  if [[ -x "$out" ]]; then
    log "cache hit: $out"
    return 0
  fi

  local go wrap module
  go="$(find_go)"
  module="$(etcd_module "$name")"
  wrap="$(prepare_etcd_wrapper "$name" "$version" "$go")"

  # etcd's release builds stamp the git SHA here; without it `etcd --version` says "Not provided".
  local ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${version}-modproxy"

  log "building ${module}@${version} as ${name} (a cold build takes a few minutes)"
  local start=$SECONDS
  mkdir -p "$bindir"
  (
    cd "$wrap"
    export GOFLAGS="-mod=mod" CGO_ENABLED=0
    "$go" get "${module}@${version}" >&2
    "$go" build -trimpath -ldflags "$ldflags" -o "${out}.tmp.$$" "${module}" >&2
  )
  mv -f "${out}.tmp.$$" "$out"
  log "built $out in $((SECONDS - start))s"
}

env_name() { tr 'a-z-' 'A-Z_' <<<"$1"; }

print_paths() {
  local mode="$1" name bindir etcd_bindir
  bindir="$(k8s_bin_dir "$KUBE_VERSION")"
  etcd_bindir="$(etcd_bin_dir "$ETCD_VERSION")"
  for name in $KUBE_COMPONENTS; do
    if [[ $mode == env ]]; then
      echo "export $(env_name "$name")=${bindir}/${name}"
    else
      echo "${bindir}/${name}"
    fi
  done
  for name in $ETCD_COMPONENTS; do
    if [[ $mode == env ]]; then
      echo "export $(env_name "$name")=${etcd_bindir}/${name}"
    else
      echo "${etcd_bindir}/${name}"
    fi
  done
  if [[ $mode == env ]]; then
    echo "export KUBE_VERSION=${KUBE_VERSION}"
    echo "export KUBESIGN_K8S_BIN=${bindir}"
    echo "export ETCD_VERSION=${ETCD_VERSION}"
    echo "export KUBESIGN_ETCD_BIN=${etcd_bindir}"
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
      if [[ -n "${ETCD_COMPONENTS// /}" ]]; then
        mkdir -p "${KUBESIGN_CACHE}/etcd/${ETCD_VERSION}"
        exec 9>"${KUBESIGN_CACHE}/etcd/${ETCD_VERSION}/.lock"
        flock 9
        for name in $ETCD_COMPONENTS; do build_etcd_cmd "$name" "$ETCD_VERSION"; done
        exec 9>&-
      fi
      if [[ $cmd == env ]]; then print_paths env; else print_paths plain; fi
      ;;
    paths) print_paths plain ;;
    -h|--help|help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" ;;
    *) die "unknown command '$cmd' (build|env|paths|help)" ;;
  esac
}

main "$@"
