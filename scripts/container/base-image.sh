#!/usr/bin/env bash
# Build a minimal Debian base image locally, for machines that reach no container registry:
# debootstrap (minbase) + python3, python3-venv, ca-certificates, with the suite's security
# updates, imported into podman. The Dockerfile builds on it with
#   podman build --build-arg BASE_IMAGE=localhost/xacthuc-base:bookworm ...
#
# Usage: scripts/container/base-image.sh [--rebuild] [--image NAME] [--suite SUITE] [--mirror URL]
# Needs root, debootstrap and podman (Debian: apt-get install -y debootstrap podman).
# Idempotent: does nothing when the image exists, unless --rebuild. Prints the image name.
set -euo pipefail

image=${XACTHUC_BASE_IMAGE:-localhost/xacthuc-base:bookworm}
suite=bookworm
mirror=http://deb.debian.org/debian
rebuild=0
while [ $# -gt 0 ]; do
  case $1 in
    --rebuild) rebuild=1 ;;
    --image) image=$2; shift ;;
    --suite) suite=$2; shift ;;
    --mirror) mirror=$2; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "base-image.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

fail() { echo "base-image.sh: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "must run as root (debootstrap and podman import)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install -y debootstrap)"
command -v podman >/dev/null || fail "podman is not installed (apt-get install -y podman)"

if [ "$rebuild" = 0 ] && podman image exists "$image"; then
  echo "base-image.sh: $image exists (--rebuild to build it again)" >&2
  echo "$image"
  exit 0
fi

root=$(mktemp -d /var/tmp/xacthuc-base.XXXXXX)
cleanup() {
  # debootstrap mounts /proc and /sys inside the target while it runs; never leave one behind.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$root/$m" 2>/dev/null; then umount -l "$root/$m" || true; fi
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "base-image.sh: debootstrap $suite (minbase) into $root" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$root" "$mirror" >&2 || fail "debootstrap (see the log above; $root/debootstrap/debootstrap.log)"

# The security and point-release updates too, as Debian's own images carry them.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
echo "base-image.sh: apt-get upgrade (security updates) in the new root" >&2
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  sh -c 'apt-get -q -o APT::Sandbox::User=root update &&
    apt-get -qy -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0 upgrade && apt-get clean' >&2 || fail "apt-get upgrade in $root"

# Small: no package lists, caches, docs, man pages, translations or logs in the image.
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/debootstrap
: >"$root/etc/machine-id"

echo "base-image.sh: podman import -> $image" >&2
old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
# No device nodes: a container runtime provides /dev (check.sh mounts the few it needs).
tar -C "$root" --numeric-owner --exclude='./dev/*' -c . |
  podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $suite + python3 python3-venv ca-certificates" \
    - "$image" >/dev/null || fail "podman import"
podman image exists "$image" || fail "podman import made no $image"
# The image it replaces (--rebuild), unless something still builds on it.
new=$(podman image inspect --format '{{.Id}}' "$image")
[ -z "$old" ] || [ "$old" = "$new" ] || podman rmi "$old" >/dev/null 2>&1 || true
echo "base-image.sh: built $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)" >&2
echo "$image"
