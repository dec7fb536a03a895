#!/usr/bin/env bash
# Prove the container image end to end: build it (on a local Debian base where no registry is
# reachable), then run the image's own ENTRYPOINT + CMD, as the image's USER, with the image's
# ENV, from the image's filesystem, and check that it serves. Two runs:
#   dev          the image's defaults (dev mode, memory store, plain gRPC) on a free port
#   production   production mode with TLS, a private Redis, a scratch PostgreSQL database
#                migrated by the image's own `xacthuc db migrate`, a signing keyring, an API keys
#                file and a log signing key, all made with the image's own `xacthuc keys` commands
# Each run: health SERVING (the image's HEALTHCHECK command as the image states it, and a
# probe client run with the image's python), reflection, real RPCs (GetJwks, Authorize) with
# an API key, a wrong key refused, the well-known HTTP listener, the metrics endpoint; then
# SIGTERM and exit 0.
#
# No container is started (these machines cannot): the image's filesystem is mounted with
# `podman create` + `podman mount`, and the entrypoint runs under `chroot --userspec` in a
# private mount namespace with the /dev and /proc a runtime would give. It shares the host's
# network, so it serves on loopback.
#
# Takes several minutes (base image, build); it is not part of scripts/test.sh.
# Usage: scripts/container/check.sh [--base-image IMAGE] [--image TAG] [--no-build]
#   --base-image  default localhost/xacthuc-base:bookworm (scripts/container/base-image.sh
#                 builds it when missing); python:3.11-slim where a registry is reachable
#   --image       the tag built and checked (default localhost/xacthuc:check)
#   --no-build    check IMAGE as it is
# Needs root, podman, unshare and chroot (util-linux, coreutils), python3, redis-server, and
# psql with a PostgreSQL server where it may create a database (XACTHUC_CHECK_DATABASE_URL,
# default postgresql://postgres@127.0.0.1:5432/postgres, trust auth).
# The build mounts the host's CA bundle for pip (a TLS-inspecting proxy); XACTHUC_BUILD_CA=''
# turns that off.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

base=localhost/xacthuc-base:bookworm
image=localhost/xacthuc:check
build=1
while [ $# -gt 0 ]; do
  case $1 in
    --base-image) base=$2; shift ;;
    --image) image=$2; shift ;;
    --no-build) build=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "check.sh: $*"; }
fail() {
  echo "check.sh: FAILED: $*" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || fail "must run as root (podman mount, chroot, mount namespaces)"
for tool in podman unshare chroot python3 redis-server redis-cli; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
UNSHARE=$(command -v unshare)

work=$(mktemp -d /tmp/xacthuc-check.XXXXXX)
ctr=""
server_pid=""
redis_pid=""
check_db=""
admin_db=${XACTHUC_CHECK_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
cleanup() {
  set +e
  if [ -n "$check_db" ]; then
    psql "$admin_db" -q -c "DROP DATABASE IF EXISTS \"$check_db\" WITH (FORCE)" >/dev/null 2>&1
  fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null
  fi
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null
    wait "$redis_pid" 2>/dev/null
  fi
  if [ -n "$ctr" ]; then
    podman umount "$ctr" >/dev/null 2>&1
    podman rm --force "$ctr" >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- build ---------------------------------------------------------------------------------
build_seconds=0
if [ "$build" = 1 ]; then
  if [[ $base == localhost/xacthuc-base:* ]]; then
    scripts/container/base-image.sh --image "$base" >/dev/null
  fi
  ca=${XACTHUC_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
  ca_args=()
  if [ -n "$ca" ] && [ -r "$ca" ]; then
    ca_args=(-v "$ca:/run/build-ca.pem:ro" --build-arg PIP_CERT=/run/build-ca.pem)
  fi
  say "podman build --isolation chroot --format docker --build-arg BASE_IMAGE=$base -t $image"
  t0=$(date +%s)
  podman build --isolation chroot --format docker --build-arg "BASE_IMAGE=$base" \
    "${ca_args[@]}" -t "$image" . >"$work/build.log" 2>&1 ||
    { tail -40 "$work/build.log" >&2; fail "podman build (the last 40 lines are above)"; }
  build_seconds=$(($(date +%s) - t0))
fi
podman image exists "$image" || fail "no image $image (build it, or drop --no-build)"

# ---- what the image says about itself ------------------------------------------------------
img_user="" img_workdir="" img_size=0 img_env=() img_entrypoint=() img_cmd=() img_health=()
eval "$(podman image inspect "$image" | python3 -c '
import json, shlex, sys
d = json.load(sys.stdin)[0]
c = d.get("Config") or {}
def arr(name, v): print(name + "=(" + " ".join(shlex.quote(x) for x in v or []) + ")")
print("img_user=" + shlex.quote(c.get("User") or ""))
print("img_workdir=" + shlex.quote(c.get("WorkingDir") or ""))
print("img_size=" + str(int(d.get("Size") or 0)))
arr("img_env", c.get("Env"))
arr("img_entrypoint", c.get("Entrypoint"))
arr("img_cmd", c.get("Cmd"))
arr("img_health", (d.get("Healthcheck") or c.get("Healthcheck") or {}).get("Test"))
')"
[ ${#img_entrypoint[@]} -gt 0 ] || fail "the image has no ENTRYPOINT"
case ${img_health[0]:-} in
  CMD) health_argv=("${img_health[@]:1}") ;;
  CMD-SHELL) health_argv=(/bin/sh -c "${img_health[1]}") ;;
  *) fail "the image has no HEALTHCHECK (podman keeps it only with --format docker): ${img_health[*]:-none}" ;;
esac
say "image $image: $((img_size / 1000000)) MB; USER ${img_user:-root}; ENTRYPOINT ${img_entrypoint[*]}; CMD ${img_cmd[*]}; HEALTHCHECK ${health_argv[*]}"

ctr=$(podman create --name "xacthuc-check-$$" "$image") || fail "podman create"
root=$(podman mount "$ctr") || fail "podman mount"

# USER as uid:gid, names resolved in the image's own /etc/passwd and /etc/group.
user=${img_user%%:*}
group=${img_user#*:}
[ "$group" != "$img_user" ] || group=""
if ! [[ $user =~ ^[0-9]+$ ]]; then
  user=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/passwd")
fi
[ -n "$group" ] || group=$(awk -F: -v u="$user" '$3 == u { print $4 }' "$root/etc/passwd")
if ! [[ $group =~ ^[0-9]+$ ]]; then
  group=$(awk -F: -v g="$group" '$1 == g { print $3 }' "$root/etc/group")
fi
[[ $user =~ ^[0-9]+$ && $group =~ ^[0-9]+$ ]] || fail "cannot resolve USER '$img_user' in the image"
if [ "$user" = 0 ] || [ "$group" = 0 ]; then fail "the image runs as root (USER '$img_user')"; fi
for leftover in src wheels opt/xacthuc/bin/pip; do
  [ ! -e "$root/$leftover" ] || fail "the image carries /$leftover (the build stage leaked)"
done
say "ok   runs as $user:$group, no build leftovers (/src, /wheels, pip)"

# image_argv [VAR=VALUE...] -- ARGV...: sets `run` to the command that runs ARGV in the image's
# filesystem as the image's user, with the image's ENV plus VARS and nothing of ours, in a
# private mount namespace (/dev, /proc). Every step execs the next: "${run[@]}" & gives the
# server's own pid. With readonly=1 the root is read-only and /tmp an empty tmpfs, as under
# compose.yaml's `read_only: true`.
readonly=0
image_argv() {
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  local argv=("$@")
  if [ -n "$img_workdir" ] && [ "$img_workdir" != / ]; then
    # shellcheck disable=SC2016  # expanded by that shell, in the image
    argv=(/bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$img_workdir" "${argv[@]}")
  fi
  # shellcheck disable=SC2016  # expanded by that shell, in the namespace
  run=(env -i "${img_env[@]}" "${vars[@]}" "$UNSHARE" --mount --propagation private -- /bin/sh -c '
    set -e
    r=$1 u=$2 ro=$3
    shift 3
    if [ "$ro" = 1 ]; then
      mount --bind "$r" "$r"
      mount -o remount,bind,ro "$r"
      mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/tmp"
    fi
    mount -t tmpfs -o mode=755,nosuid,size=256k tmpfs "$r/dev"
    for d in null zero full random urandom tty; do
      : >"$r/dev/$d"
      mount --bind "/dev/$d" "$r/dev/$d"
    done
    ln -s /proc/self/fd "$r/dev/fd"
    ln -s /proc/self/fd/0 "$r/dev/stdin"
    ln -s /proc/self/fd/1 "$r/dev/stdout"
    ln -s /proc/self/fd/2 "$r/dev/stderr"
    mkdir "$r/dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$r/dev/shm"
    mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
    exec chroot --userspec="$u" "$r" "$@"
  ' sh "$root" "$user:$group" "$readonly" "${argv[@]}")
}
in_image() {
  local run
  image_argv "$@"
  "${run[@]}"
}

probe() { in_image -- python - "$@" <scripts/container/probe.py; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Does the image's `xacthuc health` take its target and TLS from the environment? Before it
# did, it dialled 127.0.0.1:50051 in plain text whatever the server listened on.
if in_image -- "${img_entrypoint[@]}" health --help 2>&1 | grep -q -- '--tls'; then
  health_env_aware=1
else
  health_env_aware=0
  say "note: this image's 'xacthuc health' knows no TLS and no XACTHUC_LISTEN; its HEALTHCHECK is not run here, the probe client alone checks health"
fi

# run_phase NAME API_KEY_SOURCE [VAR=VALUE...]: serve with the image's ENTRYPOINT and CMD,
# check it, stop it with SIGTERM. API_KEY_SOURCE: "log" (dev mode prints a demo key) or a key.
run_phase() {
  local name=$1 key_source=$2
  shift 2
  local vars=("$@") log="$work/$name.log" port wport mport ca="" api_key=""
  port=$(free_port)
  wport=$(free_port)
  mport=$(free_port)
  vars+=("XACTHUC_LISTEN=127.0.0.1:$port" "XACTHUC_WELLKNOWN_LISTEN=127.0.0.1:$wport"
    "XACTHUC_METRICS_LISTEN=127.0.0.1:$mport")
  [ "$name" != production ] || vars+=("XACTHUC_PUBLIC_BASE_URL=http://127.0.0.1:$wport")
  for v in "${vars[@]}"; do
    [[ $v != XACTHUC_TLS_CERT_FILE=* ]] || ca=${v#*=}
  done
  say "[$name] ${img_entrypoint[*]} ${img_cmd[*]} on 127.0.0.1:$port$([ -z "$ca" ] || echo ' (TLS)'), read-only root"
  local t0
  t0=$(date +%s)
  local run
  readonly=1
  image_argv "${vars[@]}" -- "${img_entrypoint[@]}" "${img_cmd[@]}"
  readonly=0
  "${run[@]}" >"$log" 2>&1 &
  server_pid=$!
  if [ "$key_source" = log ]; then
    for _ in $(seq 600); do
      api_key=$(sed -n "s/^dev mode: demo platform 'demo' platform key: //p" "$log")
      if [ -n "$api_key" ] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
      sleep 0.1
    done
    [ -n "$api_key" ] || { cat "$log" >&2; fail "[$name] no demo key printed (the server's output is above)"; }
  else
    api_key=$key_source
  fi
  if ! probe check "127.0.0.1:$port" --api-key "$api_key" --wellknown "127.0.0.1:$wport" \
    --metrics "127.0.0.1:$mport" ${ca:+--ca "$ca"} --wait 90; then
    cat "$log" >&2
    fail "[$name] the probe failed (the server's output is above)"
  fi
  say "[$name] ok   serving $(($(date +%s) - t0)) s after start"
  local uid
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$server_pid/status")
  [ "$uid" = "$user" ] || fail "[$name] the server runs as uid $uid, not $user"
  local rootopts
  rootopts=$(awk '$5 == "/" { print $6 }' "/proc/$server_pid/mountinfo")
  [[ ,$rootopts, == *,ro,* ]] || fail "[$name] the server's root is not read-only ($rootopts)"
  if [ "$health_env_aware" = 1 ]; then
    local out
    out=$(in_image "${vars[@]}" -- "${health_argv[@]}" 2>&1) ||
      fail "[$name] the image's HEALTHCHECK (${health_argv[*]}) failed: $out"
    say "[$name] ok   the image's HEALTHCHECK (${health_argv[*]}): $out"
  fi
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  [ "$rc" = 0 ] || { cat "$log" >&2; fail "[$name] exit status $rc after SIGTERM (the server's output is above)"; }
  grep -q 'stopped' "$log" || { cat "$log" >&2; fail "[$name] no 'stopped' in the log after SIGTERM"; }
  ! grep -q Traceback "$log" || { cat "$log" >&2; fail "[$name] a traceback in the server's output"; }
  say "[$name] ok   SIGTERM: stopped, exit status 0"
}

# ---- dev: the image's defaults ---------------------------------------------------------------
run_phase dev log

# ---- production: TLS, Redis, keys made by the image's own CLI --------------------------------
rport=$(free_port)
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
redis_pid=$!
for _ in $(seq 100); do
  redis-cli -p "$rport" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$rport" ping >/dev/null 2>&1 || fail "the private redis-server did not answer ($work/redis.log)"
# In the container's own (throw-away) layer, made by the image's user; outside /tmp, which is
# an empty tmpfs for the server.
secrets=/xacthuc-check
install -d -o "$user" -g "$group" -m 0700 "$root$secrets"
probe cert "$secrets/tls" >/dev/null || fail "making a TLS certificate in the image"
in_image -- "${img_entrypoint[@]}" keys init --dir "$secrets/signing" >/dev/null 2>&1 ||
  fail "xacthuc keys init in the image"
in_image -- "${img_entrypoint[@]}" keys signing-key --out "$secrets/log.pem" >/dev/null 2>&1 ||
  fail "xacthuc keys signing-key in the image"
prod_key=$(in_image -- "${img_entrypoint[@]}" keys create --platform check --file "$secrets/api-keys.json" 2>/dev/null) ||
  fail "xacthuc keys create in the image"
rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
# The system of record: a scratch database (dropped at exit), migrated by the image's CLI.
check_db=xacthuc_check_$(python3 -c 'import secrets; print(secrets.token_hex(4))')
psql "$admin_db" -q -c "CREATE DATABASE \"$check_db\"" >/dev/null ||
  fail "cannot create a database at $admin_db (set XACTHUC_CHECK_DATABASE_URL)"
db_url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$admin_db" "$check_db")
in_image "XACTHUC_DATABASE_URL=$db_url" -- "${img_entrypoint[@]}" db migrate >/dev/null ||
  fail "xacthuc db migrate in the image"
run_phase production "$prod_key" \
  "XACTHUC_DATABASE_URL=$db_url" \
  XACTHUC_MODE=production \
  "XACTHUC_TLS_CERT_FILE=$secrets/tls/cert.pem" "XACTHUC_TLS_KEY_FILE=$secrets/tls/key.pem" \
  "XACTHUC_HEALTH_CA_FILE=$secrets/tls/cert.pem" \
  "XACTHUC_STORE_URL=redis://127.0.0.1:$rport/0" \
  "XACTHUC_SIGNING_KEYS_DIR=$secrets/signing" \
  "XACTHUC_LOG_SIGNING_KEY_FILE=$secrets/log.pem" \
  "XACTHUC_API_KEYS_FILE=$secrets/api-keys.json" \
  "XACTHUC_OTP_HMAC_KEYS=$(rand)" "XACTHUC_PSEUDONYM_KEY=$(rand)" \
  XACTHUC_SMS_BACKEND=http XACTHUC_SMS_HTTP_URL=http://127.0.0.1:9/sms \
  XACTHUC_REGISTRY_BACKEND=http XACTHUC_REGISTRY_URL=https://127.0.0.1:9/registry \
  XACTHUC_ISSUER=https://xacthuc.check.example XACTHUC_LOG_ORIGIN=xacthuc.check.example/log

say "PASSED: $image ($((img_size / 1000000)) MB) on $base; build ${build_seconds} s, all $(($(date +%s) - started)) s"
