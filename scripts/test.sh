#!/usr/bin/env bash
# The whole kubesign test suite, from a fresh machine: installs what it needs (apt packages incl.
# SoftHSM and OpenSC, real kubeadm built from the Go module proxy, the KMS emulators local-kms and
# moto), then runs formatting, lints, docs, unit tests, end-to-end tests against real kubeadm,
# SoftHSM, the KMS emulators and openssl, short fuzz runs and quick benchmarks.
# Builds are cached outside the repository ($KUBESIGN_CACHE, default ~/.cache/kubesign).
#
#   scripts/test.sh            # everything
#   FUZZ_SECONDS=60 scripts/test.sh   # longer fuzz runs
set -euo pipefail
cd "$(dirname "$0")/.."

export KUBESIGN_CACHE="${KUBESIGN_CACHE:-$HOME/.cache/kubesign}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KUBESIGN_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export FUZZ_SECONDS="${FUZZ_SECONDS:-10}"

step() { printf '\n==> %s\n' "$*" >&2; }

step "test bed: system packages and kubeadm from the Go module proxy"
eval "$(scripts/testbed.sh env)"
export KUBEADM

command -v cargo >/dev/null || { echo "cargo is required (rustup)" >&2; exit 1; }

step "KMS emulators on loopback: local-kms (Go module proxy) and moto (PyPI)"
scripts/kms-emulators.sh install
export KUBESIGN_KMS_RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kubesign-kms.XXXXXX")"
trap 'scripts/kms-emulators.sh stop >/dev/null 2>&1 || true; rm -rf "$KUBESIGN_KMS_RUN_DIR"' EXIT
eval "$(scripts/kms-emulators.sh start)"
export KUBESIGN_LOCAL_KMS_ENDPOINT KUBESIGN_MOTO_ENDPOINT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo deny: licences, bans, sources (advisories need the network)"
command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny
cargo deny --locked check licenses bans sources

step "a build without the optional backends still works and names the missing features"
cargo test --locked -p cli --no-default-features

step "build the kubesign binary"
cargo build --locked -p cli --bin kubesign -p pkcs11-shim
export KUBESIGN_BIN="$CARGO_TARGET_DIR/debug/kubesign"
export KUBESIGN_PKCS11_SHIM="$CARGO_TARGET_DIR/debug/libpkcs11_shim.so"

step "tests: unit, end-to-end (kubeadm, SoftHSM, KMS emulators, etcd + kube-apiserver), fuzz ($FUZZ_SECONDS s per target)"
test_log="$(mktemp "${TMPDIR:-/tmp}/kubesign-tests.XXXXXX")"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$test_log"

step "benchmarks (quick runs; ratios measured in the same run, not pass/fail)"
for bench in issuance pkcs11 kms serve; do
  cargo bench --locked -p integration --bench "$bench" -- --quick
done

# One closing line for the whole suite, summed over every test binary above.
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$test_log" | awk '{s += $4} END {print s + 0}')
rm -f "$test_log"
printf '\nkubesign: %s passed, 0 failed\n' "$passed"
