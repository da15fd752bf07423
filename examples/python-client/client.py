"""Service discovery and KV through an agent, with py-consul, a Consul client library.

Usage: python3 client.py [HOST:PORT]   (default 127.0.0.1:8500)

Writes and reads a key, registers a service with a TTL check on the agent, finds it
through the catalog and health endpoints (with a blocking query), fails the check and
sees the instance leave the passing set, then cleans up. Prints one line per step and
exits non-zero on the first step that does not behave as Consul's API says.
"""

import sys
import time

import consul


def step(text):
    print(f"ok   {text}", flush=True)


def fail(text):
    print(f"FAIL {text}", flush=True)
    sys.exit(1)


def eventually(what, check, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    fail(f"{what}: not seen within {seconds} s")


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8500"
    host, port = address.rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))

    # KV: put, get, compare-and-set, delete.
    if c.kv.put("python/greeting", "hello") is not True:
        fail("kv.put")
    index, entry = c.kv.get("python/greeting")
    if entry is None or entry["Value"] != b"hello" or int(index) < 1:
        fail(f"kv.get: {entry!r} at index {index}")
    if c.kv.put("python/greeting", "again", cas=0) is not False:
        fail("kv.put with cas=0 on an existing key must answer False")
    if c.kv.put("python/greeting", "bonjour", cas=entry["ModifyIndex"]) is not True:
        fail("kv.put with the right cas")
    step("kv: put, get, cas")

    # The agent's node is in the catalog.
    me = c.agent.self()["Config"]["NodeName"]
    eventually("this node in /v1/catalog/nodes",
               lambda: any(n["Node"] == me for n in c.catalog.nodes()[1]))
    step(f"catalog.nodes lists {me}")

    # A service with a TTL check, registered on the agent.
    c.agent.service.register("web", service_id="web-py", port=8080, tags=["py"],
                             check=consul.Check.ttl("30s"))
    services = c.agent.services()
    if "web-py" not in services or services["web-py"]["Port"] != 8080:
        fail(f"agent.services: {services!r}")
    c.agent.check.ttl_pass("service:web-py")
    step("agent.service.register with a TTL check, passed")

    def passing():
        return c.health.service("web", passing=True)[1]

    nodes = eventually("web passing in /v1/health/service/web?passing", passing)
    if nodes[0]["Service"]["ID"] != "web-py" or nodes[0]["Node"]["Node"] != me:
        fail(f"health.service: {nodes!r}")
    index, services = c.catalog.services()
    if "py" not in services.get("web", []):
        fail(f"catalog.services: {services!r}")
    index, instances = c.catalog.service("web", tag="py")
    if [i["ServiceID"] for i in instances] != ["web-py"]:
        fail(f"catalog.service: {instances!r}")
    step("health.service(passing=True), catalog.services, catalog.service(tag=)")

    # A blocking query returns when the check fails.
    index, _ = c.health.service("web")
    c.agent.check.ttl_fail("service:web-py", notes="going down")
    started = time.monotonic()
    while True:
        index, nodes = c.health.service("web", index=index, wait="10s")
        statuses = {chk["CheckID"]: chk["Status"] for chk in nodes[0]["Checks"]} if nodes else {}
        if statuses.get("service:web-py") == "critical":
            break
        if time.monotonic() - started > 20:
            fail(f"blocking health.service never saw the check fail: {nodes!r}")
    if passing():
        fail("a critical instance is still listed with passing=True")
    index, checks = c.health.state("critical")
    if not any(chk["CheckID"] == "service:web-py" for chk in checks):
        fail(f"health.state('critical'): {checks!r}")
    step("blocking health.service saw the check fail; health.state('critical') lists it")

    c.agent.service.deregister("web-py")
    eventually("web gone from the catalog",
               lambda: not c.catalog.service("web")[1])
    c.kv.delete("python/greeting")
    if c.kv.get("python/greeting")[1] is not None:
        fail("kv.delete")
    step("deregistered, key deleted")
    print("py-consul: all steps passed")


if __name__ == "__main__":
    main()
