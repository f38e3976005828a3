"""Tests of eip_pool.py against moto's EC2, Auto Scaling, ELBv2 and SSM mocks (no AWS needed).

moto does not implement CompleteLifecycleAction, so `HookActions` plays Auto Scaling's part of it:
an action is pending from the moment a test "launches" or "terminates" an instance until it is
completed once; completing it again fails as AWS does ("No active Lifecycle Action found").
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import eip_pool  # noqa: E402
from eip_pool import CLAIM_TAG, Config, Lifecycle, LifecycleAction, PoolExhausted  # noqa: E402

REGION = "us-east-1"
ASG = "l4relay-test-relays"
POOL_KEY, POOL_VALUE = "l4relay-pool", "test"
PORTS = (8443, 8444, 8445)
DRAIN_DOC = "l4relay-drain-test"


def no_shuffle(_candidates: list) -> None:
    """Every launch tries the addresses in the same order: the worst case for contention."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class HookActions:
    """Auto Scaling's side of the lifecycle hooks: pending actions and how they were completed."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], str] = {}
        self.completed: list[tuple[str, str, str]] = []  # (instance, hook, result)
        self.calls: list[str] = []  # shared call log, for ordering checks
        self._lock = threading.Lock()

    def start(self, instance_id: str, transition: str) -> dict[str, Any]:
        hook = "launch" if transition == eip_pool.LAUNCHING else "terminate"
        token = f"token-{hook}-{instance_id}"
        with self._lock:
            self.pending[(instance_id, hook)] = token
        return {
            "version": "0",
            "source": "aws.autoscaling",
            "detail-type": f"EC2 Instance-{hook} Lifecycle Action",
            "detail": {
                "LifecycleActionToken": token,
                "AutoScalingGroupName": ASG,
                "LifecycleHookName": hook,
                "EC2InstanceId": instance_id,
                "LifecycleTransition": transition,
            },
        }

    def launch(self, instance_id: str) -> LifecycleAction:
        return LifecycleAction.from_event(self.start(instance_id, eip_pool.LAUNCHING))

    def terminate(self, instance_id: str) -> LifecycleAction:
        return LifecycleAction.from_event(self.start(instance_id, eip_pool.TERMINATING))

    def attach(self, autoscaling: Any) -> Any:
        def complete_lifecycle_action(**kw: Any) -> dict[str, Any]:
            key = (kw["InstanceId"], kw["LifecycleHookName"])
            with self._lock:
                self.calls.append(f"complete:{kw['LifecycleActionResult']}")
                token = self.pending.get(key)
                if token is None or kw.get("LifecycleActionToken", token) != token:
                    raise ClientError(
                        {"Error": {"Code": "ValidationError",
                                   "Message": f"No active Lifecycle Action found with instance ID {kw['InstanceId']}"}},
                        "CompleteLifecycleAction",
                    )
                del self.pending[key]
                self.completed.append((kw["InstanceId"], kw["LifecycleHookName"], kw["LifecycleActionResult"]))
            return {}

        autoscaling.complete_lifecycle_action = complete_lifecycle_action
        return autoscaling

    def results(self, instance_id: str) -> list[tuple[str, str]]:
        return [(hook, result) for iid, hook, result in self.completed if iid == instance_id]


def trace(calls: list[str], client: Any, method: str, label: str | None = None) -> None:
    """Logs every call of client.method into `calls` (for checking the order of steps)."""
    original = getattr(client, method)

    def traced(**kw: Any) -> Any:
        calls.append(label or method)
        return original(**kw)

    setattr(client, method, traced)


class World:
    """A moto account with an autoscaling group of relays, a target group and an EIP pool."""

    def __init__(self, instances: int, pool_size: int) -> None:
        self.ec2 = boto3.client("ec2", region_name=REGION)
        self.autoscaling = boto3.client("autoscaling", region_name=REGION)
        self.elbv2 = boto3.client("elbv2", region_name=REGION)
        self.ssm = boto3.client("ssm", region_name=REGION)
        self.hooks = HookActions()
        self.clock = FakeClock()

        vpc = self.ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24", AvailabilityZone=f"{REGION}a")
        ami = self.ec2.describe_images()["Images"][0]["ImageId"]
        self.ec2.create_launch_template(
            LaunchTemplateName="relays", LaunchTemplateData={"ImageId": ami, "InstanceType": "c6i.large"}
        )
        self.targets: set[tuple[str, int]] = set()
        self.track_targets(self.elbv2)
        self.target_group = self.elbv2.create_target_group(
            Name="relays", Protocol="TCP", Port=PORTS[0], VpcId=vpc, TargetType="instance"
        )["TargetGroups"][0]["TargetGroupArn"]
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=ASG,
            LaunchTemplate={"LaunchTemplateName": "relays", "Version": "$Latest"},
            MinSize=0,
            MaxSize=20,
            DesiredCapacity=instances,
            VPCZoneIdentifier=subnet["Subnet"]["SubnetId"],
        )
        for name, transition in (("launch", eip_pool.LAUNCHING), ("terminate", eip_pool.TERMINATING)):
            self.autoscaling.put_lifecycle_hook(
                AutoScalingGroupName=ASG, LifecycleHookName=name, LifecycleTransition=transition,
                HeartbeatTimeout=600, DefaultResult="ABANDON" if name == "launch" else "CONTINUE",
            )
        group = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ASG])["AutoScalingGroups"][0]
        self.instances = sorted(i["InstanceId"] for i in group["Instances"])
        assert len(self.instances) == instances

        self.pool = [self.allocate({POOL_KEY: POOL_VALUE}) for _ in range(pool_size)]
        # Addresses that must never be handed out: untagged, and another pool's.
        self.outsiders = [self.allocate({}), self.allocate({POOL_KEY: "other"})]

        self.ssm.create_document(
            Name=DRAIN_DOC, DocumentType="Command", DocumentFormat="YAML",
            Content="schemaVersion: '2.2'\ndescription: drain\nmainSteps:\n"
                    "  - action: aws:runShellScript\n    name: stop\n"
                    "    inputs:\n      runCommand: ['systemctl stop l4relay']\n",
        )
        self.config = Config(
            pool_tag_key=POOL_KEY,
            pool_tag_value=POOL_VALUE,
            asg_name=ASG,
            target_group_arn=self.target_group,
            relay_ports=PORTS,
            drain_document=DRAIN_DOC,
        )

    def allocate(self, tags: dict[str, str]) -> str:
        allocation = self.ec2.allocate_address(Domain="vpc")["AllocationId"]
        if tags:
            self.ec2.create_tags(Resources=[allocation], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        return allocation

    def lifecycle(self, ec2: Any = None, ssm: Any = None, autoscaling: Any = None, **config: Any) -> Lifecycle:
        cfg = Config(**{**self.config.__dict__, **config})
        return Lifecycle(
            cfg,
            ec2=ec2 or self.ec2,
            autoscaling=self.hooks.attach(autoscaling or boto3.client("autoscaling", region_name=REGION)),
            elbv2=self.elbv2,
            ssm=ssm or self.ssm,
            sleep=self.clock.sleep,
            clock=self.clock.clock,
            shuffle=no_shuffle,
        )

    def address(self, allocation: str) -> dict[str, Any]:
        return self.ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]

    def holder(self, allocation: str) -> str | None:
        return self.address(allocation).get("InstanceId") or None  # moto says "", EC2 leaves it out

    def claim_label(self, allocation: str) -> str | None:
        tags = {t["Key"]: t["Value"] for t in self.address(allocation).get("Tags", [])}
        return tags.get(CLAIM_TAG)

    def held(self, instance_id: str) -> list[str]:
        return [a for a in self.pool + self.outsiders if self.holder(a) == instance_id]

    def registered_ports(self, instance_id: str) -> set[int]:
        return {port for iid, port in self.targets if iid == instance_id}

    def track_targets(self, elbv2: Any) -> Any:
        """Follows (instance, port) registrations through the calls made on `elbv2`. moto keeps one
        registration per instance whatever the port, so it cannot say which ports are registered;
        it still validates each call."""
        register, deregister = elbv2.register_targets, elbv2.deregister_targets

        def register_targets(**kw: Any) -> Any:
            result = register(**kw)
            self.targets.update((t["Id"], t["Port"]) for t in kw["Targets"])
            return result

        def deregister_targets(**kw: Any) -> Any:
            wanted = {(t["Id"], t["Port"]) for t in kw["Targets"]}
            try:
                result = deregister(**kw)
            except ClientError as e:
                # moto dropped the instance with its first port; another port of it is no error.
                if _code(e) != "InvalidTarget" or not wanted <= self.targets:
                    raise
                result = {}
            self.targets -= wanted
            return result

        elbv2.register_targets, elbv2.deregister_targets = register_targets, deregister_targets
        return elbv2


def _code(e: ClientError) -> str:
    return e.response["Error"]["Code"]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for var in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield


# --- launch ---------------------------------------------------------------------------------


def test_launch_assigns_a_free_pool_eip_and_continues(aws):
    w = World(instances=1, pool_size=2)
    [iid] = w.instances

    assert w.lifecycle().handle(w.hooks.launch(iid)) == "launched"

    [allocation] = w.held(iid)
    assert allocation in w.pool
    assert w.claim_label(allocation) == iid
    assert w.hooks.results(iid) == [("launch", "CONTINUE")]
    assert w.registered_ports(iid) == set(PORTS)


def test_concurrent_launches_interleaved_get_different_eips(aws):
    """B lists the free addresses, then A claims the first one before B associates it."""
    w = World(instances=2, pool_size=2)
    a, b = w.instances
    lifecycle_a = w.lifecycle()

    ec2_b = boto3.client("ec2", region_name=REGION)
    attempts_b: list[str] = []
    associate_b = ec2_b.associate_address

    def associate_after_a_won(**kw: Any) -> Any:
        if not attempts_b:
            lifecycle_a.handle(w.hooks.launch(a))  # A runs to completion inside B's race window
        attempts_b.append(kw["AllocationId"])
        return associate_b(**kw)

    ec2_b.associate_address = associate_after_a_won
    w.lifecycle(ec2=ec2_b).handle(w.hooks.launch(b))

    [eip_a], [eip_b] = w.held(a), w.held(b)
    assert eip_a != eip_b
    assert attempts_b == [eip_a, eip_b], "B tried A's address first, was refused, took the next"
    assert w.hooks.results(a) == [("launch", "CONTINUE")]
    assert w.hooks.results(b) == [("launch", "CONTINUE")]


def test_concurrent_launches_in_threads_get_different_eips(aws):
    n = 6
    w = World(instances=n, pool_size=n)
    # Every thread lists the free addresses before any of them associates one, and (no_shuffle)
    # all start with the same address.
    listed = threading.Barrier(n, timeout=30)
    # EC2 makes each association atomic; moto's in-memory check-then-set is not thread-safe, so
    # the lock stands in for EC2's serialisation of AssociateAddress.
    ec2_atomic = threading.Lock()
    errors: list[BaseException] = []

    def make_client() -> Any:
        ec2 = boto3.client("ec2", region_name=REGION)
        describe, associate = ec2.describe_addresses, ec2.associate_address
        first_listing = [True]

        def describe_addresses(**kw: Any) -> Any:
            result = describe(**kw)
            names = {f["Name"] for f in kw.get("Filters", [])}
            if first_listing[0] and "instance-id" not in names and "AllocationIds" not in kw and f"tag:{POOL_KEY}" in names:
                first_listing[0] = False
                listed.wait()
            return result

        def associate_address(**kw: Any) -> Any:
            with ec2_atomic:
                return associate(**kw)

        ec2.describe_addresses, ec2.associate_address = describe_addresses, associate_address
        return ec2

    lifecycles = [w.lifecycle(ec2=make_client()) for _ in range(n)]
    actions = [w.hooks.launch(iid) for iid in w.instances]

    def run(lifecycle: Lifecycle, action: LifecycleAction) -> None:
        try:
            lifecycle.handle(action)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(lifecycles, actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors

    holdings = {iid: w.held(iid) for iid in w.instances}
    assert all(len(h) == 1 for h in holdings.values()), holdings
    assert sorted(h[0] for h in holdings.values()) == sorted(w.pool)
    assert all(w.hooks.results(iid) == [("launch", "CONTINUE")] for iid in w.instances)


def test_retried_launch_event_after_completion_changes_nothing(aws):
    w = World(instances=1, pool_size=3)
    [iid] = w.instances
    event = w.hooks.start(iid, eip_pool.LAUNCHING)
    w.lifecycle().handle(LifecycleAction.from_event(event))
    [allocation] = w.held(iid)
    association = w.address(allocation)["AssociationId"]

    # The same event again (EventBridge delivers at least once; the Lambda may be retried).
    assert w.lifecycle().handle(LifecycleAction.from_event(event)) == "launched"

    assert w.held(iid) == [allocation]
    assert w.address(allocation)["AssociationId"] == association
    assert [w.holder(a) for a in w.pool].count(None) == 2, "no second address taken"
    assert w.hooks.results(iid) == [("launch", "CONTINUE")]


def test_retried_launch_after_a_crash_before_completing_finishes_the_hook(aws):
    w = World(instances=1, pool_size=3)
    [iid] = w.instances
    action = w.hooks.launch(iid)

    crashing = w.lifecycle()

    def crash(**_kw: Any) -> None:
        raise ConnectionError("Lambda timed out")

    crashing.autoscaling.complete_lifecycle_action = crash
    with pytest.raises(ConnectionError):
        crashing.handle(action)
    [allocation] = w.held(iid)

    w.lifecycle().handle(action)  # the retry

    assert w.held(iid) == [allocation]
    assert w.hooks.results(iid) == [("launch", "CONTINUE")]


def test_empty_pool_abandons_the_launch_and_raises(aws, caplog):
    w = World(instances=1, pool_size=0)
    [iid] = w.instances

    with pytest.raises(PoolExhausted):
        w.lifecycle().handle(w.hooks.launch(iid))

    assert w.hooks.results(iid) == [("launch", "ABANDON")]
    assert w.held(iid) == [], "outsider addresses are never used"
    assert any(r.levelname == "ERROR" and "EIP POOL EXHAUSTED" in r.getMessage() for r in caplog.records)


def test_pool_taken_by_concurrent_launches_abandons(aws):
    w = World(instances=2, pool_size=1)
    a, b = w.instances
    lifecycle_a = w.lifecycle()
    ec2_b = boto3.client("ec2", region_name=REGION)
    associate_b = ec2_b.associate_address

    def associate_after_a_won(**kw: Any) -> Any:
        if not w.held(a):
            lifecycle_a.handle(w.hooks.launch(a))
        return associate_b(**kw)

    ec2_b.associate_address = associate_after_a_won
    with pytest.raises(PoolExhausted):
        w.lifecycle(ec2=ec2_b).handle(w.hooks.launch(b))

    assert w.held(a) == w.pool
    assert w.hooks.results(b) == [("launch", "ABANDON")]


def test_launch_of_an_instance_already_gone_abandons_quietly(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    action = w.hooks.launch(iid)
    w.ec2.terminate_instances(InstanceIds=[iid])

    assert w.lifecycle().handle(action) == "gone"
    assert w.holder(w.pool[0]) is None
    assert w.hooks.results(iid) == [("launch", "ABANDON")]


def test_launch_waits_for_a_pending_instance(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    ec2 = boto3.client("ec2", region_name=REGION)
    describe = ec2.describe_instances
    states = iter(["pending", "pending"])

    def describe_instances(**kw: Any) -> Any:
        result = describe(**kw)
        state = next(states, None)
        if state:
            result["Reservations"][0]["Instances"][0]["State"]["Name"] = state
        return result

    ec2.describe_instances = describe_instances
    w.lifecycle(ec2=ec2).handle(w.hooks.launch(iid))

    assert w.held(iid) == w.pool
    assert len(w.clock.sleeps) == 2


# --- terminate ------------------------------------------------------------------------------


def test_termination_drains_then_returns_the_eip_and_continues(aws):
    w = World(instances=2, pool_size=1)
    old, new = w.instances
    w.lifecycle().handle(w.hooks.launch(old))
    [allocation] = w.held(old)

    lifecycle = w.lifecycle()
    calls = w.hooks.calls
    trace(calls, lifecycle.elbv2, "deregister_targets")
    trace(calls, lifecycle.ssm, "send_command")
    trace(calls, lifecycle.ec2, "disassociate_address")
    calls.clear()
    assert lifecycle.handle(w.hooks.terminate(old)) == "terminated (drain: Success)"

    assert calls == ["deregister_targets"] * len(PORTS) + ["send_command", "disassociate_address", "complete:CONTINUE"], (
        "targets out first, address kept until l4relay has stopped, hook completed last")
    assert w.holder(allocation) is None
    assert w.claim_label(allocation) is None
    assert w.registered_ports(old) == set()
    assert w.hooks.results(old) == [("launch", "CONTINUE"), ("terminate", "CONTINUE")]

    # Back in the pool: the next instance gets it.
    w.lifecycle().handle(w.hooks.launch(new))
    assert w.held(new) == [allocation]


def test_termination_of_an_instance_without_an_eip_completes_cleanly(aws):
    w = World(instances=1, pool_size=2)
    [iid] = w.instances

    assert w.lifecycle().handle(w.hooks.terminate(iid)) == "terminated (drain: Success)"

    assert w.hooks.results(iid) == [("terminate", "CONTINUE")]
    assert all(w.holder(a) is None for a in w.pool)


def test_retried_termination_event_is_harmless(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    w.lifecycle().handle(w.hooks.launch(iid))
    event = w.hooks.start(iid, eip_pool.TERMINATING)
    w.lifecycle().handle(LifecycleAction.from_event(event))

    w.lifecycle().handle(LifecycleAction.from_event(event))

    assert w.holder(w.pool[0]) is None
    assert w.hooks.results(iid) == [("launch", "CONTINUE"), ("terminate", "CONTINUE")]


class ScriptedSsm:
    """An SSM client whose drain command reports the given statuses in turn."""

    def __init__(self, *statuses: str, send_error: str | None = None) -> None:
        self.statuses = list(statuses)
        self.send_error = send_error
        self.polls = 0

    def send_command(self, **_kw: Any) -> dict[str, Any]:
        if self.send_error:
            raise ClientError({"Error": {"Code": self.send_error, "Message": "no"}}, "SendCommand")
        return {"Command": {"CommandId": "cmd-1"}}

    def get_command_invocation(self, **_kw: Any) -> dict[str, Any]:
        self.polls += 1
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if status == "InvocationDoesNotExist":
            raise ClientError({"Error": {"Code": status, "Message": "not yet"}}, "GetCommandInvocation")
        return {"Status": status}


def test_termination_keeps_the_eip_while_the_drain_runs(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    w.lifecycle().handle(w.hooks.launch(iid))
    ssm = ScriptedSsm("InvocationDoesNotExist", "Pending", "InProgress", "InProgress", "Success")
    lifecycle = w.lifecycle(ssm=ssm)
    disassociate = lifecycle.ec2.disassociate_address

    def disassociate_address(**kw: Any) -> Any:
        assert ssm.statuses == ["Success"], "address released before the drain finished"
        return disassociate(**kw)

    lifecycle.ec2.disassociate_address = disassociate_address
    assert lifecycle.handle(w.hooks.terminate(iid)) == "terminated (drain: Success)"
    assert ssm.polls == 5
    assert w.holder(w.pool[0]) is None


def test_termination_when_the_drain_cannot_be_sent_still_completes(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    w.lifecycle().handle(w.hooks.launch(iid))

    result = w.lifecycle(ssm=ScriptedSsm(send_error="InvalidInstanceId")).handle(w.hooks.terminate(iid))

    assert result == "terminated (drain: not-sent)"
    assert w.holder(w.pool[0]) is None
    assert w.hooks.results(iid)[-1] == ("terminate", "CONTINUE")


def test_termination_stops_waiting_at_the_drain_budget(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    w.lifecycle().handle(w.hooks.launch(iid))

    lifecycle = w.lifecycle(ssm=ScriptedSsm("InProgress"), drain_wait_seconds=60, poll_seconds=5)
    result = lifecycle.handle(w.hooks.terminate(iid))

    assert result == "terminated (drain: waited-out (InProgress))"
    assert sum(w.clock.sleeps) == 60
    assert w.hooks.results(iid)[-1] == ("terminate", "CONTINUE")


# --- wiring ---------------------------------------------------------------------------------


def test_events_of_other_groups_are_ignored(aws):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    event = w.hooks.start(iid, eip_pool.LAUNCHING)
    event["detail"]["AutoScalingGroupName"] = "someone-else"

    assert w.lifecycle().handle(LifecycleAction.from_event(event)) == "ignored"
    assert w.holder(w.pool[0]) is None


def test_config_from_env():
    cfg = Config.from_env({
        "POOL_TAG_KEY": "k", "POOL_TAG_VALUE": "v", "ASG_NAME": "g", "TARGET_GROUP_ARN": "arn:tg",
        "FIRST_RELAY_PORT": "8443", "LAST_RELAY_PORT": "8446", "DRAIN_DOCUMENT": "d", "DRAIN_WAIT_SECONDS": "500",
    })
    assert cfg.relay_ports == (8443, 8444, 8445, 8446)
    assert (cfg.asg_name, cfg.target_group_arn, cfg.drain_document, cfg.drain_wait_seconds) == ("g", "arn:tg", "d", 500)
    assert Config.from_env({"POOL_TAG_KEY": "k", "POOL_TAG_VALUE": "v"}).relay_ports == ()


def test_handler_end_to_end_from_the_environment(aws, monkeypatch):
    w = World(instances=1, pool_size=1)
    [iid] = w.instances
    for name, value in {
        "POOL_TAG_KEY": POOL_KEY, "POOL_TAG_VALUE": POOL_VALUE, "ASG_NAME": ASG,
        "TARGET_GROUP_ARN": w.target_group, "FIRST_RELAY_PORT": str(PORTS[0]),
        "LAST_RELAY_PORT": str(PORTS[-1]), "DRAIN_DOCUMENT": DRAIN_DOC,
    }.items():
        monkeypatch.setenv(name, value)
    real_client = boto3.client

    def client(service: str, *args: Any, **kw: Any) -> Any:
        c = real_client(service, *args, **kw)
        if service == "autoscaling":
            return w.hooks.attach(c)
        return w.track_targets(c) if service == "elbv2" else c

    monkeypatch.setattr(eip_pool.boto3, "client", client)

    assert eip_pool.handler(w.hooks.start(iid, eip_pool.LAUNCHING), None) == "launched"
    assert w.held(iid) == w.pool and w.registered_ports(iid) == set(PORTS)
    assert eip_pool.handler(w.hooks.start(iid, eip_pool.TERMINATING), None) == "terminated (drain: Success)"
    assert w.held(iid) == [] and w.registered_ports(iid) == set()
    assert w.hooks.results(iid) == [("launch", "CONTINUE"), ("terminate", "CONTINUE")]
