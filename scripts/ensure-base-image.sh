#!/usr/bin/env bash
# Make sure the image's Python base is in the engine's store; print its name.
#
#   scripts/ensure-base-image.sh ENGINE [IMAGE]      (make image)
#
# IMAGE (default: the Dockerfile's official python:3.11 slim image) is used when the engine
# has it or can pull it. Where no registry answers, an equivalent base is made from Debian's
# own packages with debootstrap (bookworm, python3.11, security updates applied) and imported
# as localhost/do-db-provisioner-base:bookworm-python3.11. The engine's store is the cache:
# it is rebuilt only when missing (`ENGINE rmi` it to refresh). debootstrap is installed with
# apt where it can be (root), as scripts/ensure-rabbitmq.sh installs RabbitMQ.
set -euo pipefail

engine="${1:?usage: $0 docker|podman [IMAGE]}"
official="${2:-python:3.11.14-slim-bookworm}"
local_base="localhost/do-db-provisioner-base:bookworm-python3.11"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
packages="python3.11,python3.11-venv,python3-distutils,python-is-python3,ca-certificates"

say() { echo "base image: $*" >&2; }
have() { "$engine" image inspect "$1" >/dev/null 2>&1; }

for image in "$official" "$local_base"; do
    if have "$image"; then
        say "$image (present)"
        echo "$image"
        exit 0
    fi
done

# A registry that does not answer can make a pull hang for minutes: bound it.
if timeout 60 "$engine" pull --quiet "$official" >/dev/null 2>&1; then
    say "$official (pulled)"
    echo "$official"
    exit 0
fi
say "cannot pull $official; making $local_base from Debian's packages"

if [ "$(id -u)" != "0" ]; then
    say "debootstrap needs root (it creates device nodes and runs package scripts in a chroot)."
    echo "Run as root:  sudo scripts/ensure-base-image.sh $engine" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing debootstrap with apt-get"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            debootstrap >&2
    else
        echo "debootstrap is needed: sudo apt-get install -y debootstrap" >&2
        exit 1
    fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/provisioner-base.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >&2

# Security and point-release updates: debootstrap installs the release as it was published.
cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
EOF
chroot "$rootfs" apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get upgrade -y -q >&2
chroot "$rootfs" apt-get clean

# What a container never reads: package lists, caches, manuals, translations, and docs
# (each package's copyright file stays, as the licences ask).
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
       "$rootfs"/var/cache/debconf/*-old "$rootfs"/usr/share/man "$rootfs"/usr/share/info \
       "$rootfs"/usr/share/locale
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
# The build host's name and resolver must not travel in the image.
: > "$rootfs/etc/hostname"
: > "$rootfs/etc/resolv.conf"

tar --numeric-owner -C "$rootfs" -c . \
    | "$engine" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "Debian bookworm minbase with $packages" \
        - "$local_base" >&2
say "$local_base (made with debootstrap)"
echo "$local_base"
