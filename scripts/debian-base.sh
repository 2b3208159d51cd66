#!/usr/bin/env bash
# Make a local Debian base image for modelberth's Dockerfile, for machines that cannot pull
# one (tests/image builds on it: docker build --build-arg BASE=modelberth-base:bookworm).
# debootstrap (installed from Debian if missing) builds a minimal bookworm with python3,
# python3-venv and ca-certificates from the apt mirror this machine already uses, and the
# tree is `docker import`ed. If the image exists, nothing is done.
#   MODELBERTH_BASE_IMAGE  the image to make (default modelberth-base:bookworm)
#   MODELBERTH_BASE_SUITE  the Debian suite (default bookworm)
set -euo pipefail

image=${MODELBERTH_BASE_IMAGE:-modelberth-base:bookworm}
suite=${MODELBERTH_BASE_SUITE:-bookworm}

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "debian-base: $image exists" >&2
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "debian-base: installing debootstrap (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi

# The mirror apt uses here: the first enabled source (one-line .list or deb822 .sources)
# whose suites include $suite; apt reads only *.list and *.sources files.
mirror_of() {
  local file
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
              /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    case "$file" in
      *.sources)
        awk -v suite="$suite" '
          function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " suite " "))
              { split(uris, u, " "); print u[1]; found = 1; exit }
            types = uris = suites = enabled = ""
          }
          /^[ \t]*#/ { next }
          /^[ \t]*$/ { flush(); next }
          { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
          key == "types:" { types = $0 } key == "uris:" { uris = $0 }
          key == "suites:" { suites = $0 } key == "enabled:" { enabled = tolower($0) }
          END { if (!found) flush() }' "$file" ;;
      *)
        awk -v suite="$suite" '
          $1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
          }' "$file" ;;
    esac
  done | head -n 1
}

mirror=$(mirror_of)
mirror=${mirror:-http://deb.debian.org/debian}
echo "debian-base: debootstrap $suite from $mirror" >&2

work=$(mktemp -d /tmp/modelberth-debian-base.XXXXXX)
root=$work/rootfs
cleanup() {
  # debootstrap mounts /proc and /sys in the tree while it runs; a failed run may leave them.
  local mount
  awk -v root="$root" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r mount; do umount -l "$mount" || true; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  echo "debian-base: debootstrap failed; its log:" >&2
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}
echo "debian-base: debootstrap took $((SECONDS - start))s" >&2

# An image holds no package lists, caches or the build host's name.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"

start=$SECONDS
tar --numeric-owner --xattrs -C "$root" -c . \
  | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase $suite + python3 python3-venv ca-certificates" \
      - "$image" >/dev/null
echo "debian-base: imported $image ($(docker image inspect -f '{{.Size}}' "$image" \
  | awk '{ printf "%.0f MB", $1 / 1e6 }')) in $((SECONDS - start))s" >&2
