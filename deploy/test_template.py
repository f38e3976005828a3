"""Checks of deploy/l4relay.yaml that cfn-lint cannot make.

- The drain timings hold together (the relations written above the template's Drain mapping), so
  that editing one number without the others fails here rather than cutting streams in production.
- The instance bootstrap (the launch template's user data) renders an l4relay.toml that says what
  the stack means: it is run through bash with sample parameters (and a stand-in for the instance
  metadata service), parsed, and validated with `l4relay check` when a built binary is at hand
  (L4RELAY_BIN, target/release, target/debug, PATH).
- The launch template asks for EgressAddresses - 1 secondary private addresses.
- The lifecycle function's environment names are the ones eip_pool.Config reads.
- The function's Lambda runtime is not within half a year of its deprecation, by the dates of the
  installed cfn-lint (which itself warns only once the date has passed, and errors only once AWS
  refuses to create the function). `python deploy/test_template.py --runtime-dates` prints them.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.data import AdditionalSpecs
from cfnlint.decode import decode
from cfnlint.helpers import load_resource

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "lambda"))

import eip_pool  # noqa: E402


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    tpl, errors = decode(str(HERE / "l4relay.yaml"))
    assert not errors, errors
    return tpl


@pytest.fixture(scope="module")
def drain(template: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in template["Mappings"]["Drain"]["Relay"].items()}


def resolve(value: Any, template: dict[str, Any]) -> Any:
    """Resolves the Fn::FindInMap (and Fn::Sub of one) this template uses for numbers."""
    if isinstance(value, dict) and "Fn::FindInMap" in value:
        m, k1, k2 = value["Fn::FindInMap"]
        return template["Mappings"][m][k1][k2]
    if isinstance(value, dict) and "Fn::Sub" in value:
        text, variables = value["Fn::Sub"]
        return re.sub(r"\$\{(\w+)\}", lambda mo: str(resolve(variables[mo.group(1)], template)), text)
    return value


def resource(template: dict[str, Any], name: str) -> dict[str, Any]:
    return template["Resources"][name]["Properties"]


# --- drain timings --------------------------------------------------------------------------


def test_the_nlb_notices_a_drain_within_announce(template, drain):
    tg = resource(template, "TargetGroup")
    interval = int(resolve(tg["HealthCheckIntervalSeconds"], template))
    threshold = int(resolve(tg["UnhealthyThresholdCount"], template))
    assert tg["HealthCheckProtocol"] == "HTTP" and tg["HealthCheckPath"] == "/readyz"
    assert str(tg["HealthCheckPort"]) == "8080"
    # Failures counted from the first check after SIGTERM, which may be an interval away.
    assert interval * threshold + interval < drain["Announce"]
    assert int(tg["HealthCheckTimeoutSeconds"]) < interval


def test_the_nlb_keeps_forwarding_for_the_whole_drain(template, drain):
    attrs = {a["Key"]: resolve(a["Value"], template) for a in resource(template, "TargetGroup")["TargetGroupAttributes"]}
    lifetime = drain["Announce"] + drain["Deadline"] + drain["CloseSpread"]
    assert drain["ConnectionLifetime"] == lifetime
    assert attrs["proxy_protocol_v2.enabled"] == "true"
    assert attrs["preserve_client_ip.enabled"] == "false"
    assert int(attrs["deregistration_delay.timeout_seconds"]) >= drain["Deadline"]
    assert int(attrs["deregistration_delay.timeout_seconds"]) == lifetime
    assert attrs["deregistration_delay.connection_termination.enabled"] == "false"
    assert attrs["target_health_state.unhealthy.connection_termination.enabled"] == "false"
    assert int(attrs["target_health_state.unhealthy.draining_interval_seconds"]) == lifetime


def test_the_termination_hook_outlasts_the_stop(template, drain):
    assert drain["StopBudget"] >= drain["ConnectionLifetime"] + 10, "time to flush and exit"
    hooks = {h["LifecycleTransition"]: h for h in resource(template, "AutoScalingGroup")["LifecycleHookSpecificationList"]}
    terminate = hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
    launch = hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert int(resolve(terminate["HeartbeatTimeout"], template)) == drain["TerminateHookTimeout"]
    assert launch["DefaultResult"] == "ABANDON"
    assert int(resolve(launch["HeartbeatTimeout"], template)) == drain["LaunchHookTimeout"]

    fn = resource(template, "LifecycleFunction")
    wait = int(resolve(fn["Environment"]["Variables"]["DRAIN_WAIT_SECONDS"], template))
    command_timeout = resolve(
        resource(template, "DrainDocument")["Content"]["mainSteps"][0]["inputs"]["timeoutSeconds"], template)
    # The function's wait covers the stop plus command delivery, and ends before the hook does.
    assert wait == drain["DrainWait"] == int(command_timeout)
    assert drain["StopBudget"] + 60 <= wait < drain["TerminateHookTimeout"]
    assert wait + 60 <= int(fn["Timeout"]) <= 900


def test_the_lifecycle_function_environment_matches_its_config(template):
    env = resource(template, "LifecycleFunction")["Environment"]["Variables"]
    read = set(re.findall(r'env(?:\.get)?[\[(]"([A-Z_]+)"', Path(eip_pool.__file__).read_text()))
    assert read == set(env), (read, set(env))


def test_user_data_widens_the_ephemeral_ports_and_reserves_the_listeners(template, drain):
    run = render(template, drain, function="sysctl_conf")
    assert run.returncode == 0, run.stderr
    settings = dict(line.split(" = ", 1) for line in run.stdout.splitlines() if line and not line.startswith("#"))
    assert list(settings)[:2] == ["net.ipv4.ip_local_reserved_ports", "net.ipv4.ip_local_port_range"], "reserved first"
    # Ports of upstream connections l4relay closed first come back after 1 s, not 60 s.
    assert settings["net.ipv4.tcp_tw_reuse"] == "1"
    low, high = map(int, settings["net.ipv4.ip_local_port_range"].split())
    assert (low, high) == (1024, 65535)
    assert low % 2 != high % 2, "different parities: the kernel prefers even ports for connect(), odd for bind()"
    reserved: set[int] = set()
    for part in settings["net.ipv4.ip_local_reserved_ports"].split(","):
        first, _, last = part.partition("-")
        reserved.update(range(int(first), int(last or first) + 1))
    assert reserved == {8443, 8444, 8445, 8446, 8080, 9090}, "every port l4relay listens on, nothing else"
    # docs/deploy.md's capacity arithmetic uses this number.
    assert high - low + 1 - len(reserved) == 64506


# --- NLB idle timeout -------------------------------------------------------------------------


def test_the_nlb_idle_timeout_is_a_parameter_of_the_listener(template):
    param = template["Parameters"]["NlbIdleTimeout"]
    assert (int(param["Default"]), int(param["MinValue"]), int(param["MaxValue"])) == (350, 60, 6000)
    attrs = {a["Key"]: a["Value"] for a in resource(template, "Listener")["ListenerAttributes"]}
    assert attrs == {"tcp.idle_timeout.seconds": {"Ref": "NlbIdleTimeout"}}


# l4relay's defaults (README, listener keys): keepalive_interval 10 s, keepalive_count 3.
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 3


@pytest.mark.parametrize("timeout,idle", [("60", 30), ("100", 50), ("121", 60), ("350", 60), ("6000", 60)])
def test_client_keepalive_fits_inside_the_nlb_idle_timeout(template, drain, timeout, idle):
    run = render(template, drain, NlbIdleTimeout=timeout)
    assert run.returncode == 0, run.stderr
    for listener in tomllib.loads(run.stdout)["listener"]:
        assert listener["keepalive"] is True
        assert listener["keepalive_idle"] == f"{idle}s"
    # The first probe, and a retry if it is lost, both reach the NLB before it forgets the flow.
    assert idle + KEEPALIVE_INTERVAL < int(timeout)


@pytest.mark.parametrize("timeout", ["59", "6001"])
def test_user_data_refuses_an_nlb_idle_timeout_out_of_range(template, drain, timeout):
    run = render(template, drain, function="check_parameters", NlbIdleTimeout=timeout)
    assert run.returncode != 0 and "NlbIdleTimeout" in run.stderr


# --- Lambda runtime ---------------------------------------------------------------------------

# Time to move to a newer runtime before AWS deprecates this one (and then blocks creating it).
RUNTIME_NOTICE = datetime.timedelta(days=180)


def runtime_dates(runtime: str) -> dict[str, str] | None:
    """cfn-lint's lifecycle dates of a Lambda runtime: deprecated, create-block, update-block."""
    return load_resource(AdditionalSpecs, "LmbdRuntimeLifecycle.json").get(runtime)


def test_the_lambda_runtime_is_far_from_its_deprecation(template):
    runtime = resource(template, "LifecycleFunction")["Runtime"]
    assert runtime.startswith("python3."), "eip_pool.py is Python"
    dates = runtime_dates(runtime)
    assert dates is not None, f"cfn-lint has no lifecycle dates for {runtime}: pick a runtime it knows"
    deprecated = datetime.date.fromisoformat(dates["deprecated"])
    assert datetime.date.today() + RUNTIME_NOTICE < deprecated, (
        f"Lambda deprecates {runtime} on {deprecated} (creation blocked {dates['create-block']}): "
        f"move LifecycleFunction to {dates.get('successor') or 'a newer runtime'}")


def test_cfn_lint_knows_the_retired_runtimes():
    """The installed cfn-lint carries deprecation data at all (an old or broken install would let a
    retired runtime through silently)."""
    for retired in ("python3.8", "python3.9"):
        assert datetime.date.fromisoformat(runtime_dates(retired)["deprecated"]) <= datetime.date.today()


# --- user data --------------------------------------------------------------------------------


def user_data(template: dict[str, Any]) -> tuple[str, str]:
    joined = resource(template, "LaunchTemplate")["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    header = joined[0]["Fn::Sub"][0]
    body = joined[1]
    assert isinstance(header, str) and isinstance(body, str)
    return header, body


SAMPLE = {
    "AWS::StackName": "l4relay-test",
    "AWS::Region": "eu-west-1",
    "DebUrl": "s3://artifacts-bucket/l4relay/l4relay_0.1.0-1_amd64.deb",
    "DebSha256": "",
    "UpstreamHost": "myresource.openai.azure.com:443",
    "FirstRelayPort": "8443",
    "LastRelayPort": "8446",
    "Cidrs": "10.20.0.0/24,10.20.1.0/24,10.20.2.0/24",
    "Vpces": "vpce-0123456789abcdef0,vpce-0fedcba9876543210",
    "MaxConnections": "120000",
    "EgressAddresses": "1",
    "NlbIdleTimeout": "350",
}

# The instance's private addresses as IMDS lists them (primary first).
PRIVATE = ["10.20.1.10", "10.20.1.11", "10.20.1.12"]
MAC = "02:1f:aa:bb:cc:dd"


def imds_stub(associations: dict[str, str], private: list[str] = PRIVATE) -> str:
    """A bash `imds` standing in for the instance metadata service: `associations` maps each
    Elastic IP to the private address it is associated with (in the order IMDS lists them)."""
    base = f"network/interfaces/macs/{MAC}"
    paths = {"mac": MAC, f"{base}/local-ipv4s": "\n".join(private), f"{base}/subnet-ipv4-cidr-block": "10.20.1.0/24"}
    if associations:
        paths[f"{base}/ipv4-associations/"] = "\n".join(associations)
    paths.update({f"{base}/ipv4-associations/{public}": ip for public, ip in associations.items()})
    cases = "".join(f"    {shlex.quote(path)}) printf '%s\\n' {shlex.quote(value)} ;;\n" for path, value in paths.items())
    return f"imds() {{\n  case $1 in\n{cases}    *) return 1 ;;\n  esac\n}}\n"


def render(template: dict[str, Any], drain: dict[str, int], function: str = "render_config 10.20.1.10",
           prelude: str = "", **params: str) -> subprocess.CompletedProcess:
    """Runs the user data with `function` in place of its last line (`main`), after `prelude`
    (stand-ins for commands)."""
    header, body = user_data(template)
    values = {**SAMPLE, **params, "Announce": drain["Announce"], "Deadline": drain["Deadline"],
              "CloseSpread": drain["CloseSpread"], "StopBudget": drain["StopBudget"]}
    script = re.sub(r"\$\{([\w:]+)\}", lambda m: str(values[m.group(1)]), header)
    assert "${" not in script
    lines = body.rstrip("\n").split("\n")
    assert lines[-1] == "main", "the body ends by calling main"
    script += "\n".join(lines[:-1]) + f"\n{prelude}\n{function}\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def l4relay_binary() -> str | None:
    candidates = [os.environ.get("L4RELAY_BIN", ""), str(REPO / "target/release/l4relay"),
                  str(REPO / "target/debug/l4relay"), shutil.which("l4relay") or ""]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def test_user_data_renders_the_stack_into_l4relay_toml(template, drain, tmp_path):
    run = render(template, drain)
    assert run.returncode == 0, run.stderr
    config = tomllib.loads(run.stdout)

    assert config["global"]["max_connections"] == 120000
    assert config["admin"] == {"listen": "127.0.0.1:9090", "health_listen": "0.0.0.0:8080"}
    assert config["drain"] == {"announce": f"{drain['Announce']}s", "deadline": f"{drain['Deadline']}s",
                               "close_spread": f"{drain['CloseSpread']}s"}
    listeners = config["listener"]
    assert [entry["listen"] for entry in listeners] == [f"0.0.0.0:{p}" for p in range(8443, 8447)]
    for entry in listeners:
        assert entry["proxy_protocol"] == "v2"
        assert entry["proxy_protocol_from"] == ["10.20.0.0/24", "10.20.1.0/24", "10.20.2.0/24"]
        assert entry["allow_vpce"] == ["vpce-0123456789abcdef0", "vpce-0fedcba9876543210"]
        assert entry["pool"] == "upstream"
        assert entry["keepalive"] is True and entry["keepalive_idle"] == "60s"
    [pool] = config["pool"]
    assert pool["server"] == [{"address": "myresource.openai.azure.com:443"}]
    # One egress address: a plain string, which every l4relay version takes.
    assert pool["source"] == "10.20.1.10"

    l4relay_check(run.stdout, tmp_path)


def l4relay_check(config: str, tmp_path: Path) -> None:
    binary = l4relay_binary()
    if binary is None:
        pytest.skip("no l4relay binary to run `check` with (set L4RELAY_BIN or build it)")
    path = tmp_path / "l4relay.toml"
    path.write_text(config)
    check = subprocess.run([binary, "check", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_user_data_renders_several_egress_addresses_as_a_source_list(template, drain, tmp_path):
    """Needs an l4relay whose pool `source` takes a list (with an older one, `check` fails here)."""
    run = render(template, drain, function=f"render_config {','.join(PRIVATE)}", EgressAddresses="3")
    assert run.returncode == 0, run.stderr
    [pool] = tomllib.loads(run.stdout)["pool"]
    assert pool["source"] == PRIVATE

    l4relay_check(run.stdout, tmp_path)


@pytest.mark.parametrize("egress,associations,expected", [
    # Every address associated: IMDS order (primary first), whatever order the associations have.
    ("3", {"203.0.113.9": "10.20.1.12", "203.0.113.5": "10.20.1.10", "203.0.113.7": "10.20.1.11"},
     "10.20.1.10,10.20.1.11,10.20.1.12"),
    ("1", {"203.0.113.5": "10.20.1.10"}, "10.20.1.10"),
    ("2", {"203.0.113.5": "10.20.1.10", "203.0.113.7": "10.20.1.11"}, "10.20.1.10,10.20.1.11"),
    # The function is still associating: not yet.
    ("3", {"203.0.113.5": "10.20.1.10", "203.0.113.7": "10.20.1.11"}, None),
    ("1", {}, None),
])
def test_user_data_takes_the_sources_from_the_instance_metadata(template, drain, egress, associations, expected):
    run = render(template, drain, function="egress_sources", prelude=imds_stub(associations), EgressAddresses=egress)
    if expected is None:
        assert run.returncode != 0 and run.stdout == ""
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == expected


def test_user_data_puts_the_secondary_addresses_on_the_interface_at_every_boot(template, drain):
    link = f"2: ens5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9001 qdisc mq state UP\\    link/ether {MAC} brd ff:ff:ff:ff:ff:ff"
    ip_stub = f"ip() {{ echo '1: lo: <LOOPBACK,UP> mtu 65536'; echo '{link}'; }}\n"
    run = render(template, drain, function=f"egress_unit {','.join(PRIVATE)}", prelude=imds_stub({}) + ip_stub,
                 EgressAddresses="3")
    assert run.returncode == 0, run.stderr
    unit = run.stdout
    assert "Before=l4relay.service" in unit and "RequiredBy=l4relay.service" in unit
    assert "After=network-online.target" in unit
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    execs = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert execs == ["ExecStart=ip address replace 10.20.1.11/24 dev ens5",
                     "ExecStart=ip address replace 10.20.1.12/24 dev ens5"], "the secondaries, not the primary"


def test_launch_template_asks_for_a_private_address_per_egress_address(template):
    nic = resource(template, "LaunchTemplate")["LaunchTemplateData"]["NetworkInterfaces"][0]
    condition, secondaries, absent = nic["SecondaryPrivateIpAddressCount"]["Fn::If"]
    assert condition == "HasSecondaryAddresses" and absent == {"Ref": "AWS::NoValue"}
    assert template["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "EgressAddresses"}, 1]}]}
    table, key, field = secondaries["Fn::FindInMap"]
    assert key == {"Ref": "EgressAddresses"}
    allowed = template["Parameters"]["EgressAddresses"]["AllowedValues"]
    assert str(template["Parameters"]["EgressAddresses"]["Default"]) == "1"
    assert {int(n): int(v[field]) for n, v in template["Mappings"][table].items()} == {int(n): int(n) - 1 for n in allowed}
    fn = resource(template, "LifecycleFunction")["Environment"]["Variables"]
    assert fn["EGRESS_ADDRESSES"] == {"Ref": "EgressAddresses"}


def test_user_data_without_an_endpoint_allowlist_leaves_allow_vpce_out(template, drain):
    run = render(template, drain, Vpces="", FirstRelayPort="9443", LastRelayPort="9443")
    assert run.returncode == 0, run.stderr
    [listener] = tomllib.loads(run.stdout)["listener"]
    assert listener["listen"] == "0.0.0.0:9443"
    assert "allow_vpce" not in listener


@pytest.mark.parametrize("first,last", [("8446", "8443"), ("8000", "8016"), ("8079", "8081"), ("9090", "9091")])
def test_user_data_refuses_a_bad_port_range(template, drain, first, last):
    run = render(template, drain, function="check_parameters", FirstRelayPort=first, LastRelayPort=last)
    assert run.returncode != 0
    assert "FATAL" in run.stderr


def test_user_data_fits_the_16_kib_limit(template, drain):
    header, body = user_data(template)
    assert len((header + body).encode()) < 16 * 1024


if __name__ == "__main__" and sys.argv[1:] == ["--runtime-dates"]:
    tpl, errors = decode(str(HERE / "l4relay.yaml"))
    if errors:
        sys.exit(f"cannot read deploy/l4relay.yaml: {errors}")
    name = tpl["Resources"]["LifecycleFunction"]["Properties"]["Runtime"]
    dates = runtime_dates(name)
    print(f"Lambda runtime {name}: " + (", ".join(f"{k} {v}" for k, v in dates.items()) if dates else "no lifecycle data"))
