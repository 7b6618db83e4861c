#!/usr/bin/env bash
# AWS KMS emulators for kubesign's backend-kms tests: local-kms (built from the Go module proxy)
# and moto's server (installed from PyPI into a private venv). Both listen on 127.0.0.1 only.
#
# Usage:
#   scripts/kms-emulators.sh install   # build/install both into the cache (a second run is offline)
#   scripts/kms-emulators.sh start     # install if needed, start both on free loopback ports, wait
#                                      # until they answer, print `export NAME=URL` lines:
#                                      #   eval "$(scripts/kms-emulators.sh start)"
#   scripts/kms-emulators.sh env       # print the export lines of the running emulators
#   scripts/kms-emulators.sh stop      # stop both
#   scripts/kms-emulators.sh status    # say what runs where
#
# Every command is idempotent: `start` with both already running prints their endpoints again.
# Progress goes to stderr; stdout carries only the export lines.
#
# Environment:
#   KUBESIGN_CACHE           cache root (default $HOME/.cache/kubesign); binaries and the venv land
#                            in $KUBESIGN_CACHE/kms
#   KUBESIGN_KMS_RUN_DIR     where PIDs, logs and local-kms data live (default
#                            $KUBESIGN_CACHE/kms/run); give each independent user its own
#   KUBESIGN_KMS_WATCH_PID   when set at `start`, the emulators are stopped as soon as this process
#                            exits (the backend-kms tests pass their own PID)
#   LOCAL_KMS_VERSION        local-kms module version (default below; it must be on the proxy)
#   MOTO_SPEC                pip requirement for moto (default 'moto[server]')
#   GO                       go binary (default: go on PATH, else /usr/local/go/bin/go)
#
# What the emulators do and do not do (observed with the versions below; see backend-kms docs):
#   local-kms  honours MessageType RAW and DIGEST; ECC_NIST_P256/P384 and RSA_2048/3072/4096
#              SIGN_VERIFY keys; DisableKey answers DisabledException. Its ImportKeyMaterial takes
#              only symmetric keys (CreateKey Origin=EXTERNAL refuses asymmetric specs). It
#              listens on all interfaces upstream; this script builds it patched to bind
#              127.0.0.1.
#   moto       real keys, but Sign ignores MessageType=DIGEST (it hashes the digest again, so the
#              signature does not verify); no asymmetric key import.
set -euo pipefail

LOCAL_KMS_MODULE=github.com/nsmithuk/local-kms
LOCAL_KMS_VERSION="${LOCAL_KMS_VERSION:-v0.0.0-20260228092603-2a5e92d09ab6}"
MOTO_SPEC="${MOTO_SPEC:-moto[server]}"
KUBESIGN_CACHE="${KUBESIGN_CACHE:-${HOME}/.cache/kubesign}"
KMS_CACHE="$KUBESIGN_CACHE/kms"
BIN_DIR="$KMS_CACHE/bin"
LOCAL_KMS_BIN="$BIN_DIR/local-kms-$LOCAL_KMS_VERSION"
MOTO_VENV="$KMS_CACHE/moto-venv"
MOTO_BIN="$MOTO_VENV/bin/moto_server"
RUN_DIR="${KUBESIGN_KMS_RUN_DIR:-$KMS_CACHE/run}"
HOST=127.0.0.1
REGION=us-east-1
ACCOUNT=111122223333

log() { echo "kms-emulators: $*" >&2; }
die() { echo "kms-emulators: error: $*" >&2; exit 1; }

find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  if command -v go >/dev/null; then command -v go; return; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
  die "the Go toolchain is needed to build local-kms (https://go.dev/dl/, or apt-get install golang)"
}

find_python() {
  local py
  for py in python3 python; do
    if command -v "$py" >/dev/null && "$py" -c 'import venv' 2>/dev/null; then
      command -v "$py"; return
    fi
  done
  die "python3 with the venv module is needed for moto (apt-get install python3-venv)"
}

# ------------------------------------------------------------------------------------- install
install_local_kms() {
  if [[ -x "$LOCAL_KMS_BIN" ]]; then
    log "local-kms $LOCAL_KMS_VERSION: cached at $LOCAL_KMS_BIN"
    return
  fi
  local go src work
  go="$(find_go)"
  log "local-kms $LOCAL_KMS_VERSION: downloading from the Go module proxy"
  src="$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-mod=mod "$go" mod download -json "$LOCAL_KMS_MODULE@$LOCAL_KMS_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$src" && -f "$src/go.mod" ]] || die "could not download $LOCAL_KMS_MODULE@$LOCAL_KMS_VERSION"
  work="$(mktemp -d "${TMPDIR:-/tmp}/local-kms-build.XXXXXX")"
  cp -R "$src/." "$work/"
  chmod -R u+w "$work"
  # Upstream listens on ":PORT" (all interfaces) with no setting to change it: bind loopback.
  if grep -q 'addr := ":"+port' "$work/src/server.go" 2>/dev/null; then
    sed -i 's|addr := ":"+port|addr := "'"$HOST"':"+port|' "$work/src/server.go"
  else
    die "local-kms $LOCAL_KMS_VERSION: src/server.go has changed; update the loopback patch in $0"
  fi
  log "local-kms $LOCAL_KMS_VERSION: building (first time only)"
  mkdir -p "$BIN_DIR"
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 "$go" build -trimpath \
    -ldflags "-X main.Version=$LOCAL_KMS_VERSION" -o "$LOCAL_KMS_BIN.tmp" .) >&2 \
    || { rm -rf "$work"; die "building local-kms failed"; }
  rm -rf "$work"
  mv -f "$LOCAL_KMS_BIN.tmp" "$LOCAL_KMS_BIN"
  ln -sfn "$(basename "$LOCAL_KMS_BIN")" "$BIN_DIR/local-kms"
  log "local-kms: installed $LOCAL_KMS_BIN"
}

install_moto() {
  if [[ -x "$MOTO_BIN" ]]; then
    log "moto: cached at $MOTO_BIN"
    return
  fi
  local py
  py="$(find_python)"
  log "moto: creating a venv at $MOTO_VENV and installing $MOTO_SPEC from PyPI"
  rm -rf "$MOTO_VENV"
  mkdir -p "$KMS_CACHE"
  "$py" -m venv "$MOTO_VENV" >&2
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_SPEC" >&2 \
    || { rm -rf "$MOTO_VENV"; die "pip install $MOTO_SPEC failed"; }
  [[ -x "$MOTO_BIN" ]] || { rm -rf "$MOTO_VENV"; die "moto_server missing after install"; }
  log "moto: installed $("$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)')"
}

cmd_install() {
  install_local_kms
  install_moto
}

# ----------------------------------------------------------------------------------- start/stop
free_port() {
  "$(find_python)" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

alive() { # NAME
  local pid
  [[ -f "$RUN_DIR/$1.pid" ]] || return 1
  pid="$(cat "$RUN_DIR/$1.pid")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# An HTTP answer of any status means the server is up; both speak the KMS JSON protocol.
answers() { # URL
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST \
    -H 'Content-Type: application/x-amz-json-1.1' -H 'X-Amz-Target: TrentService.ListKeys' \
    -H "Authorization: AWS4-HMAC-SHA256 Credential=test/20240101/$REGION/kms/aws4_request, SignedHeaders=host, Signature=0" \
    --data '{}' "$1" 2>/dev/null || true)"
  [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]
}

wait_until_answers() { # NAME URL
  local i
  for ((i = 0; i < 300; i++)); do
    if answers "$2"; then return 0; fi
    alive "$1" || die "$1 exited while starting; see $RUN_DIR/$1.log"
    sleep 0.2
  done
  die "$1 did not answer at $2 within 60 s; see $RUN_DIR/$1.log"
}

start_one() { # NAME COMMAND...
  local name="$1"; shift
  if alive "$name" && answers "$(cat "$RUN_DIR/$name.url")"; then
    log "$name: already running at $(cat "$RUN_DIR/$name.url")"
    return
  fi
  stop_one "$name"
  local port url
  port="$(free_port)"
  url="http://$HOST:$port"
  case "$name" in
    local-kms)
      rm -rf "$RUN_DIR/local-kms-data"
      mkdir -p "$RUN_DIR/local-kms-data"
      PORT="$port" KMS_REGION="$REGION" KMS_ACCOUNT_ID="$ACCOUNT" \
        KMS_DATA_PATH="$RUN_DIR/local-kms-data" KMS_SEED_PATH="$RUN_DIR/no-seed.yaml" \
        setsid "$@" </dev/null >"$RUN_DIR/$name.log" 2>&1 &
      ;;
    moto)
      setsid "$@" -H "$HOST" -p "$port" </dev/null >"$RUN_DIR/$name.log" 2>&1 &
      ;;
  esac
  echo $! >"$RUN_DIR/$name.pid"
  echo "$url" >"$RUN_DIR/$name.url"
  wait_until_answers "$name" "$url"
  log "$name: running at $url (pid $(cat "$RUN_DIR/$name.pid"), log $RUN_DIR/$name.log)"
}

stop_one() { # NAME
  local name="$1" pid i
  [[ -f "$RUN_DIR/$name.pid" ]] || return 0
  pid="$(cat "$RUN_DIR/$name.pid")"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    log "$name: stopped (pid $pid)"
  fi
  rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.url"
}

start_watchdog() { # PID: stop the emulators when PID exits
  local watched="$1"
  if [[ -f "$RUN_DIR/watchdog.pid" ]]; then
    kill "$(cat "$RUN_DIR/watchdog.pid")" 2>/dev/null || true
  fi
  local lk mo
  lk="$(cat "$RUN_DIR/local-kms.pid")"
  mo="$(cat "$RUN_DIR/moto.pid")"
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    kill "$2" "$3" 2>/dev/null
    sleep 1
    rm -rf "$4"/local-kms-data
    rm -f "$4"/local-kms.pid "$4"/moto.pid "$4"/local-kms.url "$4"/moto.url "$4"/watchdog.pid \
      "$4"/local-kms.log "$4"/moto.log
    rmdir "$4" 2>/dev/null || true
  ' kms-emulators-watchdog "$watched" "$lk" "$mo" "$RUN_DIR" </dev/null >/dev/null 2>&1 &
  echo $! >"$RUN_DIR/watchdog.pid"
}

print_env() {
  alive local-kms || die "local-kms is not running: run $0 start"
  alive moto || die "moto is not running: run $0 start"
  echo "export KUBESIGN_LOCAL_KMS_ENDPOINT=$(cat "$RUN_DIR/local-kms.url")"
  echo "export KUBESIGN_MOTO_ENDPOINT=$(cat "$RUN_DIR/moto.url")"
}

cmd_start() {
  command -v curl >/dev/null || die "curl is needed to probe the emulators (apt-get install curl)"
  cmd_install
  mkdir -p "$RUN_DIR"
  start_one local-kms "$LOCAL_KMS_BIN"
  start_one moto "$MOTO_BIN"
  if [[ -n "${KUBESIGN_KMS_WATCH_PID:-}" ]]; then
    start_watchdog "$KUBESIGN_KMS_WATCH_PID"
  fi
  print_env
}

cmd_stop() {
  if [[ -f "$RUN_DIR/watchdog.pid" ]]; then
    kill "$(cat "$RUN_DIR/watchdog.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/watchdog.pid"
  fi
  stop_one local-kms
  stop_one moto
  rm -rf "$RUN_DIR/local-kms-data"
}

cmd_status() {
  local name
  for name in local-kms moto; do
    if alive "$name"; then
      echo "$name: running at $(cat "$RUN_DIR/$name.url") (pid $(cat "$RUN_DIR/$name.pid"))"
    else
      echo "$name: not running"
    fi
  done
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  env) print_env ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|start|env|stop|status" >&2; exit 2 ;;
esac
