#!/usr/bin/env bash
# kubesign's main job on the file backend: sign a real `kubeadm certs generate-csr` directory
# (examples/kubeadm-csr, made by kubeadm v1.35.4 from examples/kubeadm-config.yaml) with three
# CAs created on the fly, then check the result with kubesign and with openssl.
#
# Works on a fresh machine with a Rust toolchain. Nothing in the repository is modified: the
# CSR directory is copied to a temporary work directory, whose path is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

export KUBESIGN_CACHE="${KUBESIGN_CACHE:-$HOME/.cache/kubesign}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KUBESIGN_CACHE/target}"
command -v cargo >/dev/null || { echo "quickstart: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "quickstart: openssl is required (apt-get install openssl)" >&2; exit 1; }

echo "==> building kubesign" >&2
cargo build --quiet --locked -p cli --bin kubesign
kubesign="$CARGO_TARGET_DIR/debug/kubesign"

work="$(mktemp -d "${TMPDIR:-/tmp}/kubesign-quickstart.XXXXXX")"
cp -r examples/kubeadm-csr/pki examples/kubeadm-csr/kubeconfig "$work/"
mkdir -m 0700 "$work/keys"
cat > "$work/kubesign.yaml" <<YAML
apiVersion: kubesign.dev/v1alpha1
kind: SignerConfiguration
cas:
  kubernetes:
    key: file:keys/ca.key
    certificate: cas/ca.crt
    keyAlgorithm: ECDSA-P256
  etcd:
    key: file:keys/etcd-ca.key
    certificate: cas/etcd/ca.crt
    keyAlgorithm: ECDSA-P256
  front-proxy:
    key: file:keys/front-proxy-ca.key
    certificate: cas/front-proxy-ca.crt
    keyAlgorithm: ECDSA-P256
audit:
  path: audit.jsonl
YAML

echo "==> kubesign ca init" >&2
"$kubesign" ca init --config "$work/kubesign.yaml"
echo "==> kubesign sign" >&2
"$kubesign" sign --config "$work/kubesign.yaml" --cert-dir "$work/pki" --kubeconfig-dir "$work/kubeconfig"
echo "==> kubesign check" >&2
"$kubesign" check --config "$work/kubesign.yaml" --cert-dir "$work/pki" --kubeconfig-dir "$work/kubeconfig"

echo "==> openssl verify (independent check)" >&2
openssl verify -CAfile "$work/pki/ca.crt" "$work/pki/apiserver.crt" "$work/pki/apiserver-kubelet-client.crt"
openssl verify -CAfile "$work/pki/front-proxy-ca.crt" "$work/pki/front-proxy-client.crt"
openssl verify -CAfile "$work/pki/etcd/ca.crt" "$work/pki/apiserver-etcd-client.crt" "$work/pki/etcd/server.crt" \
  "$work/pki/etcd/peer.crt" "$work/pki/etcd/healthcheck-client.crt"

echo >&2
echo "Signed tree: $work (CA keys in $work/keys, audit log $work/audit.jsonl)" >&2
