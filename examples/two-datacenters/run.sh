#!/usr/bin/env bash
# Two federated datacenters: dc1 (three servers s1-s3 and a client agent c1) and dc2 (one
# server t1), on 127.0.0.<BASE> to <BASE+4>, with one CA for both. t1 joins the WAN pool
# through s1 only; the other dc1 servers are found through s1's LAN pool. Once both
# datacenters have a leader and the WAN pool lists the four servers, it writes a key into
# dc2 and fires an event in dc2, both through dc1's client agent (?dc=dc2, --dc dc2),
# shows that dc1 has neither, then stops every agent.
#
#   examples/two-datacenters/run.sh            # builds the agent if needed
#   AGENT=/path/to/agent BASE=81 examples/two-datacenters/run.sh
#   KEEP=1 examples/two-datacenters/run.sh     # keeps the agents running until Ctrl-C
set -euo pipefail

BASE=${BASE:-71}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${AGENT:-}" ]; then
  cargo build --release -p agent --manifest-path "$root/Cargo.toml" >&2
  AGENT="$root/target/release/agent"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/two-datacenters.XXXXXX")
pids=()

stop() {
  trap - EXIT INT TERM
  echo "Stopping the agents..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  echo "Stopped."
}
trap stop EXIT
# Ctrl-C (or kill) ends the script, and its EXIT trap stops the agents.
trap 'exit 130' INT
trap 'exit 143' TERM

#            node  datacenter  role                    address
agents=(
  "s1 dc1 server 127.0.0.$BASE"
  "s2 dc1 server 127.0.0.$((BASE + 1))"
  "s3 dc1 server 127.0.0.$((BASE + 2))"
  "c1 dc1 client 127.0.0.$((BASE + 3))"
  "t1 dc2 server 127.0.0.$((BASE + 4))"
)
s1="127.0.0.$BASE"
c1="127.0.0.$((BASE + 3))"
t1="127.0.0.$((BASE + 4))"

# Prints what failed and the end of every agent's log, then exits (which stops them).
fail() {
  echo "error: $*" >&2
  for log in "$work"/*.log; do
    echo "----- $(basename "$log")" >&2
    tail -n 40 "$log" >&2
  done
  exit 1
}

# wait_for "what" COMMAND...: runs COMMAND every 0.2 s until it succeeds, for at most 60 s.
wait_for() {
  local what=$1
  shift
  for _ in $(seq 1 300); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  fail "timed out waiting for $what"
}

# One CA for both datacenters; each certificate names its datacenter and role.
"$AGENT" tls ca create --dir "$work/certs" >/dev/null
for agent in "${agents[@]}"; do
  read -r node dc role ip <<<"$agent"
  "$AGENT" tls cert create "--$role" --dc "$dc" --node "$node" --out "$node" \
    --dir "$work/certs" >/dev/null
  args=(--dc "$dc" --node "$node" --data-dir "$work/$node"
    --bind "$ip:8301" --http "$ip:8500" --dns "$ip:8600")
  case "$node" in
    s1) args+=(--server --bootstrap-expect 3 --wan-bind "$ip:8302") ;;
    s*) args+=(--server --bootstrap-expect 3 --wan-bind "$ip:8302" --join "$s1:8301") ;;
    c1) args+=(--join "$s1:8301") ;;
    # dc2's server: one WAN join to dc1's first server federates every server.
    t1) args+=(--server --bootstrap-expect 1 --wan-bind "$ip:8302" --join-wan "$s1:8302") ;;
  esac
  "$AGENT" run "${args[@]}" \
    --ca-file "$work/certs/agent-ca.pem" \
    --cert-file "$work/certs/$node.pem" --key-file "$work/certs/$node-key.pem" \
    >"$work/$node.log" 2>&1 &
  pids+=($!)
  echo "started $node ($dc $role) on $ip"
done

has_leader() {
  local leader
  leader=$(curl -s --max-time 2 "http://$1:8500/v1/status/leader" || true)
  [ -n "$leader" ] && [ "$leader" != '""' ]
}
# The alive members of the WAN pool as the server at $1 sees it, on one line.
wan_alive() {
  AGENT_HTTP_ADDR="$1:8500" "$AGENT" members --wan --status alive 2>/dev/null |
    awk 'NR > 1 { print $1 }' | sort | tr '\n' ' '
}
# Every server sees the four servers: c1 forwards a ?dc=dc2 request to any dc1 server,
# and each of them needs a path to dc2.
wan_complete() {
  local ip
  for ip in "$s1" "127.0.0.$((BASE + 1))" "127.0.0.$((BASE + 2))" "$t1"; do
    [ "$(wan_alive "$ip")" = "s1.dc1 s2.dc1 s3.dc1 t1.dc2 " ] || return 1
  done
}
datacenters() { curl -s --max-time 2 "http://$c1:8500/v1/catalog/datacenters" || true; }
both_datacenters() { [ "$(datacenters)" = '["dc1","dc2"]' ]; }

wait_for "a leader in dc1" has_leader "$s1"
wait_for "a leader in dc2" has_leader "$t1"
wait_for "every server to see the four servers in the WAN pool" wan_complete
wait_for "dc1's client agent to list both datacenters" both_datacenters
echo
echo "\$ AGENT_HTTP_ADDR=$s1:8500 agent members --wan"
AGENT_HTTP_ADDR="$s1:8500" "$AGENT" members --wan
echo
echo "\$ curl http://$c1:8500/v1/catalog/datacenters"
echo "datacenters: $(datacenters)"

echo
echo "\$ curl -X PUT --data blue 'http://$c1:8500/v1/kv/app/color?dc=dc2'"
put=$(curl -s -X PUT --data 'blue' "http://$c1:8500/v1/kv/app/color?dc=dc2")
echo "write to dc2 via dc1 client: $put"
[ "$put" = true ] || fail "the write to dc2 answered '$put'"
color=$(curl -s "http://$c1:8500/v1/kv/app/color?dc=dc2&raw")
echo "dc2 via dc1 client: $color"
color=$(curl -s "http://$t1:8500/v1/kv/app/color?raw")
echo "dc2 on its own server: $color"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://$c1:8500/v1/kv/app/color")
if [ "$status" = 404 ]; then
  echo "dc1 has app/color: no (HTTP 404)"
else
  echo "dc1 has app/color: yes (HTTP $status)"
fi

echo
echo "\$ AGENT_HTTP_ADDR=$c1:8500 agent event --name deploy --dc dc2 v42"
AGENT_HTTP_ADDR="$c1:8500" "$AGENT" event --name deploy --dc dc2 v42
deploy_events() {
  curl -s --max-time 2 "http://$1:8500/v1/event/list?name=deploy" |
    grep -o '"Name": *"deploy"' | wc -l || true
}
dc2_has_event() { [ "$(deploy_events "$t1")" -ge 1 ]; }
wait_for "the deploy event in dc2" dc2_has_event
echo "\$ curl http://$t1:8500/v1/event/list?name=deploy"
curl -s "http://$t1:8500/v1/event/list?name=deploy"
echo
echo "deploy events in dc2: $(deploy_events "$t1")"
echo "deploy events in dc1: $(deploy_events "$c1")"

if [ -n "${KEEP:-}" ]; then
  echo
  echo "The datacenters are running. Try:"
  echo "  AGENT_HTTP_ADDR=$t1:8500 $AGENT members --wan"
  echo "  curl 'http://$c1:8500/v1/catalog/nodes?dc=dc2'"
  echo "Press Ctrl-C to stop them."
  wait
fi
