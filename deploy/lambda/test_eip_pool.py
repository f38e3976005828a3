"""Tests of eip_pool.py against moto's EC2, Auto Scaling, ELBv2 and SSM mocks (no AWS needed).

Two parts of AWS are played here because moto 5 lacks them:
- `HookActions`, Auto Scaling's side of CompleteLifecycleAction: an action is pending from the
  moment a test "launches" or "terminates" an instance until it is completed once; completing it
  again fails as AWS does ("No active Lifecycle Action found").
- `Associations`, EC2's association of an Elastic IP with one private address of an interface.
  moto associates an address with a whole interface (it reports the interface's primary address
  for every association, and ignores PrivateIpAddress), so with several addresses per instance it
  cannot say which one carries which. moto still keeps the addresses, their tags, the instances
  and their interfaces.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import boto3
import botocore.client
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import eip_pool  # noqa: E402
from eip_pool import CLAIM_TAG, Config, Lifecycle, LifecycleAction, PoolExhausted, TooFewPrivateAddresses  # noqa: E402

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


def _error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


class Associations:
    """EC2's associations of Elastic IPs with private addresses, as AWS documents them:

    - AssociateAddress with NetworkInterfaceId and PrivateIpAddress (default: the interface's
      primary address), or InstanceId (its primary interface's primary address);
    - AllowReassociation=False: an address associated anywhere is refused with
      Resource.AlreadyAssociated;
    - a private address carries at most one Elastic IP: associating another disassociates it;
    - DescribeAddresses shows AssociationId, NetworkInterfaceId, PrivateIpAddress and InstanceId,
      and filters on them.

    One lock stands for EC2's serialisation of these calls (moto's own state is not thread-safe).
    """

    FILTERS = {"instance-id": "InstanceId", "network-interface-id": "NetworkInterfaceId",
               "private-ip-address": "PrivateIpAddress", "association-id": "AssociationId"}

    def __init__(self) -> None:
        self.by_allocation: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self.serial = 0

    def attach(self, ec2: Any) -> Any:
        describe = ec2.describe_addresses

        def describe_addresses(**kw: Any) -> Any:
            filters = kw.pop("Filters", [])
            ours = [f for f in filters if f["Name"] in self.FILTERS]
            theirs = [f for f in filters if f["Name"] not in self.FILTERS]
            result = describe(**kw, **({"Filters": theirs} if theirs else {}))
            with self.lock:
                addresses = []
                for address in result["Addresses"]:
                    address = {k: v for k, v in address.items() if k not in self.FILTERS.values()}
                    address.update(self.by_allocation.get(address["AllocationId"], {}))
                    if all(address.get(self.FILTERS[f["Name"]]) in f["Values"] for f in ours):
                        addresses.append(address)
            return {**result, "Addresses": addresses}

        def associate_address(**kw: Any) -> Any:
            allocation = kw["AllocationId"]
            describe(AllocationIds=[allocation])  # moto validates the ID
            if "InstanceId" in kw:
                instance = ec2.describe_instances(InstanceIds=[kw["InstanceId"]])["Reservations"][0]["Instances"][0]
                eni = next(n for n in instance["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)
            else:
                eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[kw["NetworkInterfaceId"]])["NetworkInterfaces"][0]
            private = {a["PrivateIpAddress"]: a.get("Primary", False) for a in eni["PrivateIpAddresses"]}
            ip = kw.get("PrivateIpAddress") or next(a for a, primary in private.items() if primary)
            if ip not in private:
                raise _error("InvalidParameterValue", f"{ip} is not an address of {eni['NetworkInterfaceId']}",
                             "AssociateAddress")
            with self.lock:
                if allocation in self.by_allocation and not kw.get("AllowReassociation", False):
                    raise _error("Resource.AlreadyAssociated", f"resource {allocation} is already associated",
                                 "AssociateAddress")
                for other, a in list(self.by_allocation.items()):
                    if (a["NetworkInterfaceId"], a["PrivateIpAddress"]) == (eni["NetworkInterfaceId"], ip):
                        del self.by_allocation[other]  # one Elastic IP per private address
                self.serial += 1
                association = f"eipassoc-{self.serial:017x}"
                self.by_allocation[allocation] = {
                    "AssociationId": association, "NetworkInterfaceId": eni["NetworkInterfaceId"],
                    "PrivateIpAddress": ip, "InstanceId": eni.get("Attachment", {}).get("InstanceId", ""),
                }
            return {"AssociationId": association}

        def disassociate_address(**kw: Any) -> Any:
            with self.lock:
                for allocation, a in list(self.by_allocation.items()):
                    if a["AssociationId"] == kw["AssociationId"]:
                        del self.by_allocation[allocation]
                        return {}
            raise _error("InvalidAssociationID.NotFound", f"{kw['AssociationId']} not found", "DisassociateAddress")

        ec2.describe_addresses = describe_addresses
        ec2.associate_address = associate_address
        ec2.disassociate_address = disassociate_address
        return ec2


def trace(calls: list[str], client: Any, method: str, label: str | None = None) -> None:
    """Logs every call of client.method into `calls` (for checking the order of steps)."""
    original = getattr(client, method)

    def traced(**kw: Any) -> Any:
        calls.append(label or method)
        return original(**kw)

    setattr(client, method, traced)


class World:
    """A moto account with an autoscaling group of relays, a target group and an EIP pool."""

    def __init__(self, instances: int, pool_size: int, egress: int = 1, private_addresses: int | None = None) -> None:
        self.associations = Associations()
        self.ec2 = self.ec2_client()
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
        # The launch template's SecondaryPrivateIpAddressCount (moto's groups do not apply it).
        secondaries = (egress if private_addresses is None else private_addresses) - 1
        if secondaries > 0:
            for iid in self.instances:
                self.ec2.assign_private_ip_addresses(NetworkInterfaceId=self.interface(iid),
                                                     SecondaryPrivateIpAddressCount=secondaries)

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
            egress_addresses=egress,
            drain_document=DRAIN_DOC,
        )

    def ec2_client(self) -> Any:
        """An EC2 client on this account whose associations are EC2's (see Associations)."""
        return self.associations.attach(boto3.client("ec2", region_name=REGION))

    def interface(self, instance_id: str) -> str:
        instance = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return next(n["NetworkInterfaceId"] for n in instance["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)

    def private_addresses(self, instance_id: str) -> list[str]:
        """The instance's private addresses, primary first (the order of IMDS local-ipv4s)."""
        eni = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[self.interface(instance_id)])["NetworkInterfaces"][0]
        return [a["PrivateIpAddress"] for a in sorted(eni["PrivateIpAddresses"], key=lambda a: not a.get("Primary"))]

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
        return self.address(allocation).get("InstanceId") or None

    def on(self, allocation: str) -> str | None:
        """The private address the Elastic IP is associated with."""
        return self.address(allocation).get("PrivateIpAddress")

    def free(self) -> list[str]:
        return [a for a in self.pool if self.holder(a) is None]

    def claim_label(self, allocation: str) -> str | None:
        tags = {t["Key"]: t["Value"] for t in self.address(allocation).get("Tags", [])}
        return tags.get(CLAIM_TAG)

    def held(self, instance_id: str) -> list[str]:
        """The addresses the instance holds, in the order of its private addresses."""
        order = self.private_addresses(instance_id)
        mine = [a for a in self.pool + self.outsiders if self.holder(a) == instance_id]
        return sorted(mine, key=lambda a: order.index(self.on(a)))

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
    # moto's backends are not thread-safe: a thread iterating one of its dicts while another
    # thread's call changes it raises RuntimeError. One lock around every API call stands for
    # the service's own serialisation; the threaded tests race between calls, never inside one.
    calls = threading.RLock()
    make_api_call = botocore.client.BaseClient._make_api_call

    def serialised(self: Any, operation: str, params: Any) -> Any:
        with calls:
            return make_api_call(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", serialised)
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

    ec2_b = w.ec2_client()
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


@pytest.mark.parametrize("egress", [1, 3])
def test_concurrent_launches_in_threads_get_different_eips(aws, egress):
    n = 5
    w = World(instances=n, pool_size=n * egress, egress=egress)
    # Every thread lists the free addresses before any of them associates one, and (no_shuffle)
    # all start with the same addresses. Associations serialises the associations as EC2 does.
    listed = threading.Barrier(n, timeout=30)
    errors: list[BaseException] = []

    def make_client() -> Any:
        ec2 = w.ec2_client()
        describe = ec2.describe_addresses
        first_listing = [True]

        def describe_addresses(**kw: Any) -> Any:
            result = describe(**kw)
            names = {f["Name"] for f in kw.get("Filters", [])}
            if first_listing[0] and names == {f"tag:{POOL_KEY}", "domain"}:  # the pool's free addresses
                first_listing[0] = False
                listed.wait()
            return result

        ec2.describe_addresses = describe_addresses
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
    assert all(len(h) == egress for h in holdings.values()), holdings
    assert sorted(a for h in holdings.values() for a in h) == sorted(w.pool), "each address exactly once"
    for iid, held in holdings.items():
        assert [w.on(a) for a in held] == w.private_addresses(iid)
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
    ec2_b = w.ec2_client()
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


# --- several addresses per instance ---------------------------------------------------------


def test_launch_gives_every_private_address_its_own_pool_eip(aws):
    w = World(instances=1, pool_size=4, egress=3)
    [iid] = w.instances

    assert w.lifecycle().handle(w.hooks.launch(iid)) == "launched"

    held = w.held(iid)
    assert len(set(held)) == 3 and set(held) <= set(w.pool)
    assert [w.on(a) for a in held] == w.private_addresses(iid), "one per private address, primary first"
    assert all(w.claim_label(a) == iid for a in held)
    assert len(w.free()) == 1
    assert w.hooks.results(iid) == [("launch", "CONTINUE")]
    assert w.registered_ports(iid) == set(PORTS)


def test_concurrent_launches_of_several_addresses_each_get_their_own(aws):
    """B lists the free addresses; A then takes two of them before B associates any."""
    w = World(instances=2, pool_size=4, egress=2)
    a, b = w.instances
    lifecycle_a = w.lifecycle()
    ec2_b = w.ec2_client()
    attempts_b: list[str] = []
    associate_b = ec2_b.associate_address

    def associate_after_a_won(**kw: Any) -> Any:
        if not attempts_b:
            lifecycle_a.handle(w.hooks.launch(a))
        attempts_b.append(kw["AllocationId"])
        return associate_b(**kw)

    ec2_b.associate_address = associate_after_a_won
    w.lifecycle(ec2=ec2_b).handle(w.hooks.launch(b))

    held_a, held_b = w.held(a), w.held(b)
    assert len(held_a) == len(held_b) == 2 and not set(held_a) & set(held_b)
    assert attempts_b == sorted(w.pool), "B was refused A's two addresses and took the next two"
    assert [w.on(x) for x in held_b] == w.private_addresses(b)
    assert w.hooks.results(a) == w.hooks.results(b) == [("launch", "CONTINUE")]


def test_retried_launch_with_several_addresses_changes_nothing(aws):
    w = World(instances=1, pool_size=4, egress=2)
    [iid] = w.instances
    event = w.hooks.start(iid, eip_pool.LAUNCHING)
    w.lifecycle().handle(LifecycleAction.from_event(event))
    before = {a: w.address(a)["AssociationId"] for a in w.held(iid)}

    lifecycle = w.lifecycle()
    calls: list[str] = []
    trace(calls, lifecycle.ec2, "associate_address")
    assert lifecycle.handle(LifecycleAction.from_event(event)) == "launched"

    assert calls == [], "nothing associated again"
    assert {a: w.address(a)["AssociationId"] for a in w.held(iid)} == before
    assert w.hooks.results(iid) == [("launch", "CONTINUE")]


def test_retried_launch_after_a_crash_between_claims_claims_only_the_rest(aws):
    w = World(instances=1, pool_size=4, egress=3)
    [iid] = w.instances
    action = w.hooks.launch(iid)
    crashing = w.lifecycle(ec2=w.ec2_client())
    associate = crashing.ec2.associate_address
    done = []

    def associate_then_time_out(**kw: Any) -> Any:
        if len(done) == 2:
            raise ConnectionError("Lambda timed out")
        done.append(kw["AllocationId"])
        return associate(**kw)

    crashing.ec2.associate_address = associate_then_time_out
    with pytest.raises(ConnectionError):
        crashing.handle(action)
    first_two = w.held(iid)
    assert first_two == done
    associations = {a: w.address(a)["AssociationId"] for a in first_two}

    w.lifecycle().handle(action)  # the retry

    held = w.held(iid)
    assert held[:2] == first_two and len(held) == 3
    assert {a: w.address(a)["AssociationId"] for a in first_two} == associations, "kept, not re-associated"
    assert w.hooks.results(iid) == [("launch", "CONTINUE")]


def test_duplicated_launch_event_run_concurrently_keeps_one_address_per_private_address(aws):
    """EventBridge delivers at least once: two runs for the same instance, the second listing the
    pool before the first has associated anything."""
    w = World(instances=1, pool_size=4, egress=2)
    [iid] = w.instances
    first = w.lifecycle()
    ec2_second = w.ec2_client()
    associate = ec2_second.associate_address
    ran = []

    def associate_after_the_first_run(**kw: Any) -> Any:
        if not ran:
            ran.append(first.handle(w.hooks.launch(iid)))
        return associate(**kw)

    ec2_second.associate_address = associate_after_the_first_run
    w.lifecycle(ec2=ec2_second).handle(w.hooks.launch(iid))

    held = w.held(iid)
    assert len(held) == 2 and [w.on(a) for a in held] == w.private_addresses(iid)
    assert len(w.free()) == 2, "the second run took no address of its own"
    assert w.hooks.results(iid) == [("launch", "CONTINUE")], "completed once; the second finds it done"


def test_duplicated_launch_event_racing_on_other_addresses_converges(aws):
    """The two runs try different free addresses for the same private address: EC2 keeps the later
    association and frees the earlier address; each private address still ends with one."""
    w = World(instances=1, pool_size=4, egress=2)
    [iid] = w.instances
    first = w.lifecycle()
    second = w.lifecycle(ec2=w.ec2_client())
    second.pool.shuffle = list.reverse  # the first run starts at one end of the pool, this at the other
    associate = second.ec2.associate_address
    ran = []

    def associate_after_the_first_run(**kw: Any) -> Any:
        if not ran:
            ran.append(first.handle(w.hooks.launch(iid)))
        return associate(**kw)

    second.ec2.associate_address = associate_after_the_first_run
    assert second.handle(w.hooks.launch(iid)) == "launched"

    held = w.held(iid)
    assert [w.on(a) for a in held] == w.private_addresses(iid)
    assert sorted(held + w.free()) == sorted(w.pool), "the displaced addresses are free, none is lost"
    assert len(w.free()) == 2


def test_pool_smaller_than_the_addresses_an_instance_needs_abandons_before_claiming(aws, caplog):
    w = World(instances=1, pool_size=2, egress=3)
    [iid] = w.instances
    lifecycle = w.lifecycle()
    calls: list[str] = []
    trace(calls, lifecycle.ec2, "associate_address")

    with pytest.raises(PoolExhausted, match="needs 3 more .* 2 free"):
        lifecycle.handle(w.hooks.launch(iid))

    assert calls == [], "no address taken from other launches for nothing"
    assert w.free() == w.pool
    assert w.hooks.results(iid) == [("launch", "ABANDON")]
    assert any(r.levelname == "ERROR" and "EIP POOL EXHAUSTED" in r.getMessage() for r in caplog.records)


def test_pool_drained_by_a_concurrent_launch_midway_gives_back_the_partial_claim(aws):
    """B needs 2 and sees 3 free; A takes 2 of them meanwhile: B gets one, then runs out."""
    w = World(instances=2, pool_size=3, egress=2)
    a, b = w.instances
    lifecycle_a = w.lifecycle()
    ec2_b = w.ec2_client()
    associate_b = ec2_b.associate_address

    def associate_after_a_won(**kw: Any) -> Any:
        if not w.held(a):
            lifecycle_a.handle(w.hooks.launch(a))
        return associate_b(**kw)

    ec2_b.associate_address = associate_after_a_won
    with pytest.raises(PoolExhausted, match="ran out"):
        w.lifecycle(ec2=ec2_b).handle(w.hooks.launch(b))

    assert len(w.held(a)) == 2
    assert w.held(b) == [], "the one address B got is back in the pool"
    [left] = w.free()
    assert w.claim_label(left) is None
    assert w.hooks.results(b) == [("launch", "ABANDON")]


def test_empty_pool_with_several_addresses_abandons(aws):
    w = World(instances=1, pool_size=0, egress=2)
    [iid] = w.instances

    with pytest.raises(PoolExhausted):
        w.lifecycle().handle(w.hooks.launch(iid))

    assert w.held(iid) == []
    assert w.hooks.results(iid) == [("launch", "ABANDON")]


def test_instance_without_enough_private_addresses_abandons(aws, caplog):
    """The launch template and the function disagree on EgressAddresses (a stack edited by hand)."""
    w = World(instances=1, pool_size=3, egress=3, private_addresses=2)
    [iid] = w.instances

    with pytest.raises(TooFewPrivateAddresses, match="must ask for 2 secondary"):
        w.lifecycle().handle(w.hooks.launch(iid))

    assert w.held(iid) == [] and w.free() == w.pool
    assert w.hooks.results(iid) == [("launch", "ABANDON")]


def test_termination_returns_every_address_after_the_drain(aws):
    w = World(instances=2, pool_size=3, egress=3)
    old, new = w.instances
    w.lifecycle().handle(w.hooks.launch(old))
    assert len(w.held(old)) == 3

    lifecycle = w.lifecycle()
    calls = w.hooks.calls
    trace(calls, lifecycle.ec2, "disassociate_address")
    trace(calls, lifecycle.ssm, "send_command")
    calls.clear()
    lifecycle.handle(w.hooks.terminate(old))

    assert calls == ["send_command"] + ["disassociate_address"] * 3 + ["complete:CONTINUE"]
    assert w.free() == w.pool
    assert all(w.claim_label(a) is None for a in w.pool)

    w.lifecycle().handle(w.hooks.launch(new))
    assert sorted(w.held(new)) == sorted(w.pool)


def test_retried_termination_with_several_addresses_is_harmless(aws):
    w = World(instances=1, pool_size=2, egress=2)
    [iid] = w.instances
    w.lifecycle().handle(w.hooks.launch(iid))
    event = w.hooks.start(iid, eip_pool.TERMINATING)
    w.lifecycle().handle(LifecycleAction.from_event(event))

    assert w.lifecycle().handle(LifecycleAction.from_event(event)) == "terminated (drain: Success)"

    assert w.free() == w.pool
    assert w.hooks.results(iid) == [("launch", "CONTINUE"), ("terminate", "CONTINUE")]


# --- launch edge cases ------------------------------------------------------------------------


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
    ec2 = w.ec2_client()
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
        "EGRESS_ADDRESSES": "3",
    })
    assert cfg.relay_ports == (8443, 8444, 8445, 8446)
    assert (cfg.asg_name, cfg.target_group_arn, cfg.drain_document, cfg.drain_wait_seconds) == ("g", "arn:tg", "d", 500)
    assert cfg.egress_addresses == 3
    defaults = Config.from_env({"POOL_TAG_KEY": "k", "POOL_TAG_VALUE": "v"})
    assert defaults.relay_ports == () and defaults.egress_addresses == 1
    with pytest.raises(ValueError):
        Config.from_env({"POOL_TAG_KEY": "k", "POOL_TAG_VALUE": "v", "EGRESS_ADDRESSES": "0"})


def test_handler_end_to_end_from_the_environment(aws, monkeypatch):
    w = World(instances=1, pool_size=3, egress=2)
    [iid] = w.instances
    for name, value in {
        "POOL_TAG_KEY": POOL_KEY, "POOL_TAG_VALUE": POOL_VALUE, "ASG_NAME": ASG,
        "TARGET_GROUP_ARN": w.target_group, "FIRST_RELAY_PORT": str(PORTS[0]),
        "LAST_RELAY_PORT": str(PORTS[-1]), "DRAIN_DOCUMENT": DRAIN_DOC, "EGRESS_ADDRESSES": "2",
    }.items():
        monkeypatch.setenv(name, value)
    real_client = boto3.client

    def client(service: str, *args: Any, **kw: Any) -> Any:
        c = real_client(service, *args, **kw)
        if service == "autoscaling":
            return w.hooks.attach(c)
        if service == "ec2":
            return w.associations.attach(c)
        return w.track_targets(c) if service == "elbv2" else c

    monkeypatch.setattr(eip_pool.boto3, "client", client)

    assert eip_pool.handler(w.hooks.start(iid, eip_pool.LAUNCHING), None) == "launched"
    assert len(w.held(iid)) == 2 and w.registered_ports(iid) == set(PORTS)
    assert eip_pool.handler(w.hooks.start(iid, eip_pool.TERMINATING), None) == "terminated (drain: Success)"
    assert w.held(iid) == [] and w.registered_ports(iid) == set()
    assert w.free() == w.pool
    assert w.hooks.results(iid) == [("launch", "CONTINUE"), ("terminate", "CONTINUE")]
