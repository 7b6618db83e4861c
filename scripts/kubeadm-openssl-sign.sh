#!/usr/bin/env bash
# Reference signer in plain openssl: an independent peer to compare kubesign with.
#
#   scripts/kubeadm-openssl-sign.sh make-cas CA_DIR [rsa|p256|p384]
#       Creates kubeadm-style CAs in CA_DIR: ca.{crt,key}, front-proxy-ca.{crt,key},
#       etcd/ca.{crt,key} (CN kubernetes / front-proxy-ca / etcd-ca, DNS SAN = CN,
#       KeyUsage digitalSignature,keyEncipherment,keyCertSign, CA:TRUE, 10 years).
#
#   scripts/kubeadm-openssl-sign.sh sign CA_DIR PKI_DIR KUBECONFIG_DIR
#       Signs every CSR that `kubeadm certs generate-csr` wrote (PKI_DIR/*.csr,
#       PKI_DIR/etcd/*.csr, KUBECONFIG_DIR/*.conf.csr) with the right CA and usages,
#       copies the CA certificates (not keys) into PKI_DIR, and embeds
#       client-certificate-data and certificate-authority-data into each kubeconfig.
#       The result is a PKI dir in kubeadm "external CA" mode.
#
# Each leaf: CSR subject and SANs copied, KeyUsage digitalSignature+keyEncipherment
# (critical), ExtKeyUsage by file name, CA:FALSE, 365 days.
set -euo pipefail

die() { echo "kubeadm-openssl-sign: $*" >&2; exit 1; }

genkey() { # genkey ALG OUT
  case "$1" in
    rsa)  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$2" 2>/dev/null ;;
    p256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$2" ;;
    p384) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$2" ;;
    *) die "unknown key algorithm $1" ;;
  esac
  chmod 600 "$2"
}

make_ca() { # make_ca ALG CN KEY CRT
  genkey "$1" "$3"
  openssl req -x509 -new -key "$3" -out "$4" -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -addext "subjectKeyIdentifier=hash" \
    -addext "subjectAltName=DNS:$2"
}

cmd_make_cas() {
  local dir="$1" alg="${2:-rsa}"
  mkdir -p "$dir/etcd"
  make_ca "$alg" kubernetes "$dir/ca.key" "$dir/ca.crt"
  make_ca "$alg" front-proxy-ca "$dir/front-proxy-ca.key" "$dir/front-proxy-ca.crt"
  make_ca "$alg" etcd-ca "$dir/etcd/ca.key" "$dir/etcd/ca.crt"
}

sign_one() { # sign_one CSR CA_CRT CA_KEY EKU OUT
  local ext
  ext="$(mktemp)"
  cat >"$ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$4
authorityKeyIdentifier=keyid
EOF
  openssl x509 -req -in "$1" -CA "$2" -CAkey "$3" -CAcreateserial -days 365 \
    -copy_extensions copyall -extfile "$ext" -out "$5" 2>/dev/null
  rm -f "$ext"
}

cmd_sign() {
  local ca="$1" pki="$2" kc="$3" csr base
  [[ -f "$ca/ca.key" ]] || die "no CA in $ca (run make-cas first)"
  # Leaf certificates in the PKI dir: base name -> CA and ExtKeyUsage.
  for csr in "$pki"/*.csr "$pki"/etcd/*.csr; do
    [[ -e "$csr" ]] || continue
    base="${csr#"$pki"/}"; base="${base%.csr}"
    case "$base" in
      apiserver)                sign_one "$csr" "$ca/ca.crt" "$ca/ca.key" serverAuth "$pki/$base.crt" ;;
      apiserver-kubelet-client) sign_one "$csr" "$ca/ca.crt" "$ca/ca.key" clientAuth "$pki/$base.crt" ;;
      front-proxy-client)       sign_one "$csr" "$ca/front-proxy-ca.crt" "$ca/front-proxy-ca.key" clientAuth "$pki/$base.crt" ;;
      apiserver-etcd-client|etcd/healthcheck-client)
                                sign_one "$csr" "$ca/etcd/ca.crt" "$ca/etcd/ca.key" clientAuth "$pki/$base.crt" ;;
      etcd/server|etcd/peer)    sign_one "$csr" "$ca/etcd/ca.crt" "$ca/etcd/ca.key" serverAuth,clientAuth "$pki/$base.crt" ;;
      *) die "unknown CSR $csr" ;;
    esac
  done
  mkdir -p "$pki/etcd"
  cp "$ca/ca.crt" "$pki/ca.crt"
  cp "$ca/front-proxy-ca.crt" "$pki/front-proxy-ca.crt"
  cp "$ca/etcd/ca.crt" "$pki/etcd/ca.crt"
  # Kubeconfig client certificates: all from ca, clientAuth.
  local conf crt ca_b64 crt_b64
  ca_b64="$(base64 -w0 <"$ca/ca.crt")"
  for csr in "$kc"/*.conf.csr; do
    [[ -e "$csr" ]] || continue
    conf="${csr%.csr}"
    crt="$(mktemp)"
    sign_one "$csr" "$ca/ca.crt" "$ca/ca.key" clientAuth "$crt"
    crt_b64="$(base64 -w0 <"$crt")"
    rm -f "$crt"
    # generate-csr leaves both fields out entirely; add them next to server / client-key-data.
    sed -i -e '/^    certificate-authority-data: /d' -e '/^    client-certificate-data: /d' \
           -e "s|^\(    server: .*\)$|    certificate-authority-data: ${ca_b64}\n\1|" \
           -e "s|^\(    client-key-data: .*\)$|    client-certificate-data: ${crt_b64}\n\1|" "$conf"
  done
}

case "${1:-}" in
  make-cas) shift; [[ $# -ge 1 ]] || die "usage: make-cas CA_DIR [rsa|p256|p384]"; cmd_make_cas "$@" ;;
  sign)     shift; [[ $# -eq 3 ]] || die "usage: sign CA_DIR PKI_DIR KUBECONFIG_DIR"; cmd_sign "$@" ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
