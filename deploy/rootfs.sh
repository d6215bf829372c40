#!/usr/bin/env bash
# Assembles the container image's whole filesystem for authzd in DESTDIR:
#
#   deploy/rootfs.sh BINARY DESTDIR
#
# deploy/Dockerfile copies DESTDIR into an empty (`FROM scratch`) image, and
# scripts/build-image.sh packs it into an OCI image without Docker; tests/image_rootfs.rs
# runs authzd with nothing but this filesystem. It holds:
#
#   /usr/local/bin/authzd            BINARY
#   the shared libraries BINARY      exactly what `ldd BINARY` resolves here, the dynamic
#   needs, and the dynamic loader    loader included, each at the path ldd names
#   /etc/passwd, /etc/group          root, nobody and nonroot (65532), the image's user
#   /etc/os-release,                 which Debian release and packages the libraries come
#   /var/lib/dpkg/status.d/PKG,      from, with their licences, for image scanners and
#   /usr/share/doc/PKG/copyright     licence notices
#   /tmp                             empty, mode 1777
#
# No CA bundle: authzd reads no system trust store (TLS to PostgreSQL verifies against
# `sslrootcert`, `authzd health` against `--tls-ca`), and no time zone data: logs are UTC.
# /etc/hosts and /etc/resolv.conf come from the container runtime. No /etc/nsswitch.conf:
# without it this glibc (Debian 12's 2.36) reads /etc/hosts before it asks DNS (so
# Kubernetes hostAliases work), with the `files` and `dns` sources built into libc.so.6
# itself: no libnss_*.so to ship.
#
# Run it on the system the binary was built on (deploy/Dockerfile: the rust:1-bookworm
# builder; scripts/build-image.sh: this machine): it needs ldd and dpkg-query (Debian).
set -euo pipefail

die() { printf 'rootfs.sh: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: deploy/rootfs.sh BINARY DESTDIR"
bin=$1
dest=$2
[[ -f "$bin" && -x "$bin" ]] || die "$bin: not an executable file"
if [[ -e "$dest" ]]; then
    [[ -d "$dest" && -z "$(ls -A "$dest")" ]] || die "$dest exists and is not an empty directory"
fi
command -v ldd >/dev/null || die "ldd not found (Debian: libc-bin)"
command -v dpkg-query >/dev/null || die "dpkg-query not found: run this on Debian, where the binary was built"
umask 022
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

install -D -m 0755 "$bin" "$dest/usr/local/bin/authzd"

# The libraries and the loader, as the loader resolves them here. ldd prints
# `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, the loader as
# `/lib64/ld-linux-x86-64.so.2 (0x...)`, and the kernel's vDSO without a path.
deps=$(ldd "$bin" 2>&1) || die "ldd $bin failed (a static binary needs no rootfs.sh): $deps"
packages=()
while IFS= read -r line; do
    [[ "$line" != *"not found"* ]] || die "$bin needs a library that is not installed here: $line"
    [[ "$line" =~ (^|[[:space:]])(/[^[:space:]]+) ]] || continue
    lib=${BASH_REMATCH[2]}
    # The file itself, not the symlink, at the path the loader looks for.
    mkdir -p "$dest$(dirname "$lib")"
    cp -L "$lib" "$dest$lib"
    # Which package ships it: dpkg knows the path ldd prints or, with merged /usr, the
    # real one.
    owner=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "$(readlink -f "$lib")" 2>/dev/null) \
        || die "no Debian package ships $lib"
    owner=${owner%%: *}   # `libc6:amd64: /lib/...` -> `libc6:amd64`
    packages+=("${owner%%, *}")
done <<<"$deps"
[[ ${#packages[@]} -gt 0 ]] || die "ldd found no libraries for $bin: $deps"

mkdir -p "$dest/var/lib/dpkg/status.d"
for pkg in $(printf '%s\n' "${packages[@]}" | sort -u); do
    name=${pkg%%:*}
    dpkg-query -s "$pkg" >"$dest/var/lib/dpkg/status.d/$name"
    if [[ -f "/usr/share/doc/$name/copyright" ]]; then
        install -D -m 0644 "/usr/share/doc/$name/copyright" "$dest/usr/share/doc/$name/copyright"
    fi
done
install -D -m 0644 /etc/os-release "$dest/etc/os-release"

cat >"$dest/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$dest/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
EOF
install -d -m 1777 "$dest/tmp"
