#!/usr/bin/env bash
# Offline test/devnet images for Kaisar: `docker import` of a busybox-static rootfs.
# No registry and no `docker build` are needed.
#
#   kaisar/busybox:latest    busybox applets, CMD sh
#   kaisar/demo-http:latest  busybox httpd on $PORT (default 8080): GET / is a page with
#                            the marker "kaisar-demo-http"; GET /cgi-bin/echo echoes the
#                            request (method, uri, query, body) as text/plain
#   kaisar/demo-echo:latest  TCP echo on $PORT (default 7007): busybox `nc -ll -e cat`
#   kaisar/bench-sink:latest `kaisar bench tunnel`'s server on $PORT (default 7008):
#                            scripts/bench-server.c, static (needs gcc and libssl-dev;
#                            skipped with a message when they are missing)
#
# Usage: scripts/build-images.sh [--force]
# Starts the private engine (scripts/dockerd.sh) when DOCKER_HOST is unset.
# Idempotent: an image is rebuilt only when missing or when its `kaisar.build` label
# (hash of this script and of the busybox binary) differs. Build output goes to a
# temporary dir that is removed on exit; nothing is written to the repository.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

say() { echo "build-images.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -z "${DOCKER_HOST:-}" ]; then
    eval "$("$HERE/dockerd.sh" start)"
fi
export DOCKER_HOST
command -v docker >/dev/null 2>&1 || die "docker CLI missing (apt-get install docker.io)"

# A static busybox: the rootfs has no libc. busybox-static replaces the dynamic one.
BUSYBOX=/bin/busybox
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    say "installing busybox-static with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q busybox-static >&2 || { apt-get update -q >&2 && apt-get install -y -q busybox-static >&2; }
fi
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing after installing busybox-static"

BUILD_ID="$(cat "$0" "$BUSYBOX" "$HERE/bench-server.c" | sha256sum | cut -c1-16)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kaisar-images.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Base rootfs: busybox + one symlink per applet at its canonical path.
make_base_rootfs() {
    local root="$1"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,home,var/run}
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    # The rootfs has no libc: prove busybox runs alone in it (fails if it is dynamic).
    chroot "$root" /bin/busybox true || die "$BUSYBOX does not run in an empty rootfs (not static?)"
    local applet
    for applet in $("$BUSYBOX" --list-full); do
        [ "$applet" = "bin/busybox" ] && continue
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
}

# Reproducible tar of a rootfs, then `docker import` with image config changes.
import_rootfs() {
    local root="$1" tag="$2"
    shift 2
    local tarball="$WORK/$(echo "$tag" | tr '/:' '__').tar"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "$root" -cf "$tarball" .
    local changes=(--change "LABEL kaisar.build=$BUILD_ID" --change "LABEL kaisar.image=$tag")
    local c
    for c in "$@"; do changes+=(--change "$c"); done
    docker import "${changes[@]}" --message "kaisar offline image $BUILD_ID" "$tarball" "$tag" >/dev/null
    say "built $tag ($(du -h "$tarball" | cut -f1) rootfs, build $BUILD_ID)"
}

needs_build() {
    local tag="$1"
    [ "$FORCE" = 1 ] && return 0
    local have
    have="$(docker image inspect --format '{{ index .Config.Labels "kaisar.build" }}' "$tag" 2>/dev/null || true)"
    if [ "$have" = "$BUILD_ID" ]; then
        say "$tag is up to date (build $BUILD_ID)"
        return 1
    fi
    return 0
}

build_busybox() {
    local tag=kaisar/busybox:latest
    needs_build "$tag" || return 0
    local root="$WORK/busybox"
    make_base_rootfs "$root"
    import_rootfs "$root" "$tag" 'CMD ["sh"]' 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin'
}

build_demo_http() {
    local tag=kaisar/demo-http:latest
    needs_build "$tag" || return 0
    local root="$WORK/demo-http"
    make_base_rootfs "$root"
    mkdir -p "$root/www/cgi-bin"
    cat >"$root/www/index.html" <<'EOF'
<!doctype html>
<html><head><title>kaisar demo</title></head>
<body><h1>kaisar-demo-http</h1><p>Served by busybox httpd inside a Kaisar job container.</p>
<p>GET /cgi-bin/echo?anything echoes the request back.</p></body></html>
EOF
    cat >"$root/www/cgi-bin/echo" <<'EOF'
#!/bin/sh
# Echo the request so a client can check that its own bytes made the round trip.
printf 'Content-Type: text/plain\r\n\r\n'
echo "kaisar-demo-http echo"
echo "method=$REQUEST_METHOD"
echo "uri=$REQUEST_URI"
echo "query=$QUERY_STRING"
echo "job=${KAISAR_JOB_ID:-}"
if [ -n "${CONTENT_LENGTH:-}" ] && [ "$CONTENT_LENGTH" -gt 0 ] 2>/dev/null; then
    printf 'body='
    head -c "$CONTENT_LENGTH"
    echo
fi
EOF
    chmod 0755 "$root/www/cgi-bin/echo"
    import_rootfs "$root" "$tag" \
        'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
        'ENV PORT=8080' \
        'EXPOSE 8080' \
        'USER 65534:65534' \
        'WORKDIR /www' \
        'CMD ["sh", "-c", "echo kaisar-demo-http listening on ${PORT}; exec httpd -f -v -p ${PORT} -h /www"]'
}

build_demo_echo() {
    local tag=kaisar/demo-echo:latest
    needs_build "$tag" || return 0
    local root="$WORK/demo-echo"
    make_base_rootfs "$root"
    # -ll with -e: busybox nc keeps listening and forks `cat` per connection.
    import_rootfs "$root" "$tag" \
        'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
        'ENV PORT=7007' \
        'EXPOSE 7007' \
        'USER 65534:65534' \
        'CMD ["sh", "-c", "echo kaisar-demo-echo listening on ${PORT}; exec nc -ll -p ${PORT} -e cat"]'
}

build_bench_sink() {
    local tag=kaisar/bench-sink:latest
    needs_build "$tag" || return 0
    if ! command -v gcc >/dev/null 2>&1 || ! [ -f /usr/include/openssl/evp.h ]; then
        say "skipping $tag: needs gcc and libssl-dev (apt-get install gcc libssl-dev)"
        return 0
    fi
    local root="$WORK/bench-sink"
    make_base_rootfs "$root"
    gcc -O2 -static -o "$root/bin/kaisar-bench-server" "$HERE/bench-server.c" -lcrypto -lpthread \
        2>"$WORK/gcc.log" || { cat "$WORK/gcc.log" >&2; die "compiling bench-server.c failed"; }
    chroot "$root" /bin/kaisar-bench-server --check || die "kaisar-bench-server does not run alone"
    import_rootfs "$root" "$tag" \
        'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
        'ENV PORT=7008' \
        'EXPOSE 7008' \
        'USER 65534:65534' \
        'CMD ["sh", "-c", "exec kaisar-bench-server ${PORT}"]'
}

build_busybox
build_demo_http
build_demo_echo
build_bench_sink
