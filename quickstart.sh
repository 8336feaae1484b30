#!/usr/bin/env bash
# Kiln on one machine, offline: the control plane (embedded SQLite), an agent, and a
# first deployment of examples/medusa-shop (backend and storefront), ending live with
# its artifacts on disk.
#
#   ./quickstart.sh                 (KILN_PROFILE=debug for a faster compile)
#
# Needs: cargo, git, curl, a Docker engine, node + npm and busybox-static (for the
# locally assembled build image). On a fresh Debian or Ubuntu host, run as root, it
# installs what is missing (docker.io, busybox-static, git, curl) with apt and
# starts dockerd; otherwise it prints the commands to run. Downloads nothing else.
set -euo pipefail
cd "$(dirname "$0")"

PROFILE=${KILN_PROFILE:-release}
PORT=${KILN_QUICKSTART_PORT:-18080}
DIR=${KILN_QUICKSTART_DIR:-$PWD/.kiln-quickstart}
IMAGE=kiln/node:local
URL=http://127.0.0.1:$PORT

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n1; }

# What a fresh host lacks: packages (apt) and a running Docker engine.
missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
can_install=false
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && can_install=true
if [ ${#missing[@]} -gt 0 ]; then
    $can_install || die "missing ${missing[*]}; install them (as root: apt-get install -y ${missing[*]}) and run this again"
    say "Installing ${missing[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
        say "Starting dockerd (its log: /tmp/kiln-quickstart-dockerd.log)"
        nohup dockerd >/tmp/kiln-quickstart-dockerd.log 2>&1 &
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || die "dockerd did not come up within 60 s; see /tmp/kiln-quickstart-dockerd.log"
    else
        die "Docker is not reachable; start it (systemctl start docker, or as root: nohup dockerd &) and make sure this user may use it (usermod -aG docker $(id -un)), then run this again"
    fi
fi
say "Building kiln-server and kiln-agent ($PROFILE)"
cargo build --quiet --profile "$([ "$PROFILE" = debug ] && echo dev || echo "$PROFILE")" -p kiln-control-plane -p kiln-agent
BIN=${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "Assembling the build image $IMAGE (no registry)"
    sandbox-images/build-local.sh "$IMAGE"
fi

rm -rf "$DIR" && mkdir -p "$DIR"
say "Making a git repository of examples/medusa-shop in $DIR/repo"
cp -r examples/medusa-shop "$DIR/repo"
git -C "$DIR/repo" init -q -b main
git -C "$DIR/repo" -c user.name=Kiln -c user.email=kiln@localhost add -A
git -C "$DIR/repo" -c user.name=Kiln -c user.email=kiln@localhost commit -q -m "Initial shop"
SHA=$(git -C "$DIR/repo" rev-parse HEAD)
REPO=file://$DIR/repo

# 256 random bits each, from the kernel ($RANDOM has 15 bits and is guessable).
random_token() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
export KILN_ADMIN_TOKEN=$(random_token) KILN_REGISTRATION_TOKEN=$(random_token)
say "Starting the control plane on $URL (data in $DIR/server)"
"$BIN/kiln-server" --data-dir "$DIR/server" --listen "127.0.0.1:$PORT" --allow-local-repositories >"$DIR/server.log" 2>&1 &
SERVER=$!
AGENT=
cleanup() { [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null; kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
curl -sf "$URL/healthz" >/dev/null || { tail -n 20 "$DIR/server.log" >&2; die "the control plane did not start"; }

api() { curl -sS -H "Authorization: Bearer $KILN_ADMIN_TOKEN" -H 'content-type: application/json' "$@"; }
PROJECT=$(api -X POST "$URL/api/v1/projects" \
    -d "{\"name\": \"medusa-shop\", \"repository_url\": \"$REPO\", \"storefront_path\": \"storefront\"}" | field id)
ENV=$(api -X POST "$URL/api/v1/projects/$PROJECT/environments" -d '{"name": "Production", "branch": "main", "auto_deploy": false}' | field id)
# Auto-deploy is on by default; off here, to show the Deploy step on its own.
say "Project $PROJECT, environment Production ($ENV) on branch main"

cat >"$DIR/agent.toml" <<TOML
control_plane_url = "$URL"
work_dir = "$DIR/agent/work"
state_dir = "$DIR/agent/state"
build_image = "$IMAGE"
install_network = "none"
# The example is a git repository on this disk; a build host for other people's
# code leaves this off.
allow_local_repositories = true
TOML
"$BIN/kiln-agent" --config "$DIR/agent.toml" register --url "$URL" --name quickstart
"$BIN/kiln-agent" --config "$DIR/agent.toml" run >"$DIR/agent.log" 2>&1 &
AGENT=$!

say "Pushing $SHA to main"
DEPLOYMENT=$(api -X POST "$URL/api/v1/events/push" \
    -d "{\"repository\": \"$REPO\", \"branch\": \"main\", \"sha\": \"$SHA\", \"author\": \"Kiln\", \"message\": \"Initial shop\"}" | field id)

wait_for() {
    local want=$1 status=
    for _ in $(seq 600); do
        status=$(api "$URL/api/v1/deployments/$DEPLOYMENT" | field status)
        [ "$status" = "$want" ] && return 0
        case "$status" in build_failed|build_canceled|deploy_failed)
            api "$URL/api/v1/deployments/$DEPLOYMENT/logs/system"
            die "deployment $DEPLOYMENT ended $status" ;;
        esac
        sleep 0.2
    done
    die "deployment $DEPLOYMENT is still $status"
}
wait_for awaiting_deployment
say "Deployment $DEPLOYMENT built; its logs:"
api "$URL/api/v1/deployments/$DEPLOYMENT/logs/system"
api "$URL/api/v1/deployments/$DEPLOYMENT/logs/backend"
api "$URL/api/v1/deployments/$DEPLOYMENT/logs/storefront"
api -X POST "$URL/api/v1/deployments/$DEPLOYMENT/deploy" >/dev/null
wait_for live
for artifact in backend storefront; do
    api "$URL/api/v1/deployments/$DEPLOYMENT/artifacts/$artifact.tar.gz" -o "$DIR/$artifact.tar.gz"
done
say "Deployment $DEPLOYMENT is live. Artifacts: $DIR/backend.tar.gz, $DIR/storefront.tar.gz"
tar tzf "$DIR/backend.tar.gz"
tar tzf "$DIR/storefront.tar.gz"
say "Promoted release: $(readlink "$DIR/server/releases/$ENV/current")"
