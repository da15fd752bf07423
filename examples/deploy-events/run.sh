#!/usr/bin/env bash
# Deployment events, end to end: starts four agents on 127.0.0.<BASE> to <BASE+3>, each
# running deploy.sh for every `deploy` user event, fires one `agent event --name deploy
# v42` on the first, and shows that every host "deployed" v42. Then stops them all.
#
#   examples/deploy-events/run.sh            # builds the agent if needed
#   AGENT=/path/to/agent BASE=51 examples/deploy-events/run.sh
#   KEEP=1 examples/deploy-events/run.sh     # keeps the agents running until Ctrl-C
set -euo pipefail

BASE=${BASE:-51}
VERSION=${VERSION:-v42}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${AGENT:-}" ]; then
  cargo build --release -p agent --manifest-path "$root/Cargo.toml" >&2
  AGENT="$root/target/release/agent"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/deploy-events.XXXXXX")
pids=()

stop() {
  trap - EXIT INT TERM
  echo "Stopping the agents..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  echo "Stopped."
}
trap stop EXIT INT TERM

# Where the handlers "deploy"; the agents pass their environment on to handlers.
export DEPLOY_ROOT="$work/hosts"
"$AGENT" tls ca create --dir "$work/certs" >/dev/null
hosts=(host-1 host-2 host-3 host-4)
for i in "${!hosts[@]}"; do
  node=${hosts[$i]}
  ip="127.0.0.$((BASE + i))"
  "$AGENT" tls cert create --client --dc dc1 --node "$node" --out "$node" --dir "$work/certs" >/dev/null
  join=()
  if [ "$i" -gt 0 ]; then join=(--join "127.0.0.$BASE:8301"); fi
  "$AGENT" run --node "$node" --data-dir "$work/$node" \
    --bind "$ip:8301" --http "$ip:8500" --dns "$ip:8600" "${join[@]}" \
    --event-handler "user:deploy=$here/deploy.sh" \
    --ca-file "$work/certs/agent-ca.pem" \
    --cert-file "$work/certs/$node.pem" --key-file "$work/certs/$node-key.pem" \
    >"$work/$node.log" 2>&1 &
  pids+=($!)
  echo "started $node on $ip with handler deploy.sh for 'deploy' events"
done

export AGENT_HTTP_ADDR="127.0.0.$BASE:8500"
for _ in $(seq 1 300); do
  alive=$("$AGENT" members --status alive 2>/dev/null | tail -n +2 | wc -l || true)
  [ "$alive" -ge ${#hosts[@]} ] && break
  sleep 0.1
done
"$AGENT" members
echo
echo "\$ agent event --name deploy $VERSION"
"$AGENT" event --name deploy "$VERSION"

deployed() {
  for node in "${hosts[@]}"; do
    [ "$(cat "$DEPLOY_ROOT/$node/version" 2>/dev/null)" = "$VERSION" ] || return 1
  done
}
for _ in $(seq 1 100); do
  deployed && break
  sleep 0.1
done
for node in "${hosts[@]}"; do
  echo "$node: $(cat "$DEPLOY_ROOT/$node/version" 2>/dev/null || echo '(nothing deployed)')"
done
deployed || { echo "not every host deployed $VERSION" >&2; exit 1; }
echo "every host deployed $VERSION"

if [ -n "${KEEP:-}" ]; then
  echo "The agents are running. Try: AGENT_HTTP_ADDR=$AGENT_HTTP_ADDR $AGENT event --name deploy v43"
  echo "Press Ctrl-C to stop them."
  wait
fi
