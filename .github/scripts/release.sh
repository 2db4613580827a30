#!/usr/bin/env bash
# Release steps for .github/workflows/release.yml, called as `make deploy|rollback PLATFORM=...`.
#   deploy   ship this release (HR_IMAGE on Fly, this commit on Render and Railway).
#   rollback docs/rollback.md "Application": redeploy the last good release; the Makefile then runs
#            `handoffrail smoke` on it. Refused when a migration landed in between: the old image
#            refuses to start on a newer schema, so follow docs/rollback.md "Schema" by hand.
# Every value comes from the environment (never from a workflow expression inside a script).
set -euo pipefail
cd "$(dirname "$0")/../.."

RAILWAY_CLI_VERSION=5.63.1
STATE=build/release
mkdir -p "$STATE"

die() { echo "release: $*" >&2; exit 1; }
need() { [ -n "${!1:-}" ] || die "$1 is not set (a GitHub environment secret or variable)"; }

previous_tag() {
    git describe --tags --abbrev=0 --match 'v[0-9]*' "HEAD^" 2>/dev/null \
        || die "no release tag before this one: nothing to roll back to"
}

schema_unchanged_since() {
    if ! git diff --quiet "$1" HEAD -- migrations/versions; then
        die "migrations changed since $1: roll the schema back by hand first (docs/rollback.md, Schema)"
    fi
}

# --- Fly.io: the GHCR image of this release; rollback deploys the previous release's image.
fly_deploy() {
    need FLY_API_TOKEN
    flyctl deploy --config fly.toml --image "$1" --strategy rolling --wait-timeout 600
}

# --- Render: a deploy of this commit through the API; rollback to the deploy live before it.
render_api() {
    need RENDER_API_KEY
    need RENDER_SERVICE_ID
    local method=$1 path=$2 body=${3:-}
    curl --fail-with-body --silent --show-error --retry 3 -X "$method" \
        -H "Authorization: Bearer $RENDER_API_KEY" -H "Accept: application/json" \
        -H "Content-Type: application/json" ${body:+--data "$body"} \
        "https://api.render.com/v1/services/$RENDER_SERVICE_ID$path"
}

render_wait() {
    local deploy_id=$1 status
    for _ in $(seq 1 120); do
        status=$(render_api GET "/deploys/$deploy_id" | jq -r '.status')
        case "$status" in
            live) echo "release: render deploy $deploy_id is live"; return 0 ;;
            *failed | canceled | deactivated) die "render deploy $deploy_id ended $status" ;;
        esac
        sleep 10
    done
    die "render deploy $deploy_id not live after 20 minutes"
}

render_deploy() {
    render_api GET "/deploys?limit=20" \
        | jq -r '[.[].deploy | select(.status == "live")][0] | "\(.id) \(.commit.id // "")"' \
        > "$STATE/render-previous"
    local body deploy_id
    body=$(jq -n --arg commit "$GITHUB_SHA" '{commitId: $commit}')
    deploy_id=$(render_api POST "/deploys" "$body" | jq -r '.id')
    render_wait "$deploy_id"
}

render_rollback() {
    [ -s "$STATE/render-previous" ] || die "no live Render deploy was recorded before this one"
    local previous commit body deploy_id
    read -r previous commit < "$STATE/render-previous"
    [ -n "$commit" ] && schema_unchanged_since "$commit"
    body=$(jq -n --arg deploy "$previous" '{deployId: $deploy}')
    deploy_id=$(render_api POST "/rollback" "$body" | jq -r '.id')
    render_wait "$deploy_id"
}

# --- Railway: `railway up` of this tree; rollback uploads the previous release's tree.
railway_up() {
    need RAILWAY_TOKEN
    need RAILWAY_SERVICE
    (cd "$1" && npx --yes "@railway/cli@$RAILWAY_CLI_VERSION" up --service "$RAILWAY_SERVICE" --ci)
}

[ $# -eq 2 ] || die "usage: release.sh deploy|rollback fly|render|railway"
case "$1:$2" in
    deploy:fly)
        need HR_IMAGE
        fly_deploy "$HR_IMAGE"
        ;;
    rollback:fly)
        need HR_IMAGE
        previous=$(previous_tag)
        schema_unchanged_since "$previous"
        fly_deploy "${HR_IMAGE%:*}:${previous#v}"
        ;;
    deploy:render) render_deploy ;;
    rollback:render) render_rollback ;;
    deploy:railway) railway_up . ;;
    rollback:railway)
        previous=$(previous_tag)
        schema_unchanged_since "$previous"
        rm -rf "$STATE/railway-previous"
        git worktree add --detach "$STATE/railway-previous" "$previous"
        railway_up "$STATE/railway-previous"
        ;;
    *) die "usage: release.sh deploy|rollback fly|render|railway" ;;
esac
