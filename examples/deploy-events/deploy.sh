#!/usr/bin/env bash
# The event handler of the walk-through: "deploys" the version named in the event's
# payload on this host, by writing it to $DEPLOY_ROOT/<node>/version, and keeps a log.
# The agent runs it with the payload on stdin and the event in the environment.
set -euo pipefail
version=$(head -c 256 | tr -d '\n')
dir="$DEPLOY_ROOT/$AGENT_NODE"
mkdir -p "$dir"
printf '%s\n' "$version" >"$dir/version.tmp"
mv "$dir/version.tmp" "$dir/version"
echo "deployed $version (event $AGENT_USER_EVENT, id $AGENT_EVENT_ID, ltime $AGENT_USER_LTIME)" >>"$dir/deploy.log"
