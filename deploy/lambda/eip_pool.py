"""Lifecycle hooks of the l4relay autoscaling group: stable egress addresses and an orderly stop.

EventBridge invokes `handler` for the group's two lifecycle hooks (deploy/l4relay.yaml):

  launch     (Pending:Wait)      claim EGRESS_ADDRESSES free Elastic IPs from the tagged pool, one
                                 per private address of the instance's primary interface (its
                                 primary address first, then the secondary ones the launch template
                                 asked for); register the instance on every relay port of the
                                 target group; complete the hook with CONTINUE. Too few free
                                 addresses: give back the ones claimed so far, complete with
                                 ABANDON, log an error and raise, so the launch fails loudly
                                 (Lambda Errors metric, the stack's alarm) instead of putting an
                                 instance in service that would leave from an address the
                                 upstream's firewall does not know.
  terminate  (Terminating:Wait)  deregister every relay port, stop l4relay over SSM (a blocking
                                 `systemctl stop`, which waits out the whole drain), return every
                                 address to the pool, complete the hook with CONTINUE.

Why several addresses: every upstream connection from one source address to one upstream IP:port
needs its own local port, so one source caps an instance at ~64,000 concurrent streams to one
upstream address. The bootstrap lists the instance's addresses that carry pool EIPs as l4relay's
`source`, and the relay spreads connections over them (docs/deploy.md, "Capacity").

Why termination runs in that order: open upstream connections leave through the Elastic IPs. Taking
an address away while l4relay drains would cut every stream still running on it, which is the thing
the drain exists to avoid; so the addresses go back only after l4relay has exited. Deregistering
every port first puts the targets in the NLB's `draining` state before /readyz starts failing, so
the NLB stops sending new connections without resetting the open ones.

The pool: an address belongs to it when it carries the pool tag (key and value from the stack's
parameters), and it is free when EC2 says it is associated with nothing. EC2's association is the
only source of truth, and an association is the claim: see `EipPool.claim` for the races. The
`l4relay:instance-id` tag written on a claim is a label for operators; a stale one (a crash
between two calls) is overwritten by the next claim and changes nothing.

Everything AWS is reached through boto3 clients handed to `Lifecycle`, and time through `sleep` and
`clock`, so test_eip_pool.py runs the whole logic against moto without AWS.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import boto3
from botocore.exceptions import ClientError

log = logging.getLogger("eip_pool")
log.setLevel(logging.INFO)

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"

# Written on a claimed address so an operator can see who holds it (`aws ec2 describe-addresses`).
CLAIM_TAG = "l4relay:instance-id"

# GetCommandInvocation statuses after which the command will not change any more.
SSM_FINAL = {"Success", "Failed", "Cancelled", "TimedOut"}


class PoolExhausted(RuntimeError):
    """The pool has too few free addresses for a launching instance."""


class TooFewPrivateAddresses(RuntimeError):
    """The instance has fewer private addresses than it needs egress addresses: the launch template
    and the function's EGRESS_ADDRESSES disagree (a stack that was edited by hand)."""


@dataclass(frozen=True)
class Config:
    pool_tag_key: str
    pool_tag_value: str
    # Events for any other group are ignored (the EventBridge rule already filters on it).
    asg_name: str | None = None
    target_group_arn: str | None = None
    relay_ports: tuple[int, ...] = ()
    # Elastic IPs per instance: its primary private address and EGRESS_ADDRESSES - 1 secondary ones.
    egress_addresses: int = 1
    # SSM Command document whose only step is `systemctl stop l4relay`.
    drain_document: str | None = None
    # Longest wait for the stop. systemd kills l4relay at TimeoutStopSec whatever happens, so this
    # is only a backstop; it must stay below the termination hook's timeout so that the hook is
    # completed here rather than by its timeout.
    drain_wait_seconds: float = 540
    # How long a launching instance may stay `pending` before it can take an address.
    instance_wait_seconds: float = 180
    poll_seconds: float = 5

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        first = env.get("FIRST_RELAY_PORT", "")
        last = env.get("LAST_RELAY_PORT", first)
        ports = tuple(range(int(first), int(last) + 1)) if first else ()
        egress = int(env.get("EGRESS_ADDRESSES", "1"))
        if egress < 1:
            raise ValueError(f"EGRESS_ADDRESSES must be at least 1, not {egress}")
        return cls(
            pool_tag_key=env["POOL_TAG_KEY"],
            pool_tag_value=env["POOL_TAG_VALUE"],
            asg_name=env.get("ASG_NAME") or None,
            target_group_arn=env.get("TARGET_GROUP_ARN") or None,
            relay_ports=ports,
            egress_addresses=egress,
            drain_document=env.get("DRAIN_DOCUMENT") or None,
            drain_wait_seconds=float(env.get("DRAIN_WAIT_SECONDS", "540")),
        )


@dataclass(frozen=True)
class LifecycleAction:
    """The part of an "EC2 Instance-launch/terminate Lifecycle Action" event that matters here."""

    transition: str
    asg_name: str
    hook_name: str
    instance_id: str
    token: str | None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> "LifecycleAction":
        d = event.get("detail") or {}
        return cls(
            transition=d.get("LifecycleTransition", ""),
            asg_name=d.get("AutoScalingGroupName", ""),
            hook_name=d.get("LifecycleHookName", ""),
            instance_id=d.get("EC2InstanceId", ""),
            token=d.get("LifecycleActionToken"),
        )


@dataclass(frozen=True)
class Slot:
    """A private address of the instance that is to carry one pool address."""

    network_interface_id: str
    private_ip: str


def egress_slots(instance: dict[str, Any], count: int) -> list[Slot]:
    """The first `count` private addresses of the instance's primary interface, primary first.

    The order is the bootstrap's too (IMDS `local-ipv4s` lists the primary address first, then the
    secondary ones as EC2 assigned them), so l4relay's `source` list follows it. The primary address
    always carries one: it is what the instance itself (package downloads, the SSM agent) leaves
    from. Raises TooFewPrivateAddresses when the interface has fewer than `count`.
    """
    interfaces = [n for n in instance.get("NetworkInterfaces", []) if n.get("Attachment", {}).get("DeviceIndex") == 0]
    if not interfaces:
        raise TooFewPrivateAddresses(f"{instance.get('InstanceId')} has no primary network interface")
    eni = interfaces[0]
    addresses = sorted(eni.get("PrivateIpAddresses", []), key=lambda a: not a.get("Primary"))  # stable
    if len(addresses) < count:
        raise TooFewPrivateAddresses(
            f"{instance.get('InstanceId')} has {len(addresses)} private address(es) on {eni['NetworkInterfaceId']}, "
            f"EGRESS_ADDRESSES is {count}: the launch template must ask for {count - 1} secondary one(s)")
    return [Slot(eni["NetworkInterfaceId"], a["PrivateIpAddress"]) for a in addresses[:count]]


def instance_interfaces(instance: dict[str, Any] | None) -> list[str]:
    return [n["NetworkInterfaceId"] for n in (instance or {}).get("NetworkInterfaces", [])]


def _error_code(e: ClientError) -> str:
    return e.response.get("Error", {}).get("Code", "")


def _describe(address: dict[str, Any]) -> str:
    return f"{address['AllocationId']} ({address.get('PublicIp')} on {address.get('PrivateIpAddress')})"


class EipPool:
    """The tagged Elastic IP addresses that the upstream's firewall allowlists."""

    def __init__(self, ec2: Any, tag_key: str, tag_value: str, shuffle: Callable[[list], None] | None = None):
        self.ec2 = ec2
        self.tag_key = tag_key
        self.tag_value = tag_value
        self.shuffle = shuffle if shuffle is not None else random.shuffle

    def _describe(self, *extra_filters: dict[str, Any]) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{self.tag_key}", "Values": [self.tag_value]}, {"Name": "domain", "Values": ["vpc"]}]
        return self.ec2.describe_addresses(Filters=filters + list(extra_filters))["Addresses"]

    def held_on(self, network_interface_ids: list[str]) -> list[dict[str, Any]]:
        """The pool addresses associated with these interfaces now (an instance's, by its interfaces:
        an address associated with a secondary private address is the interface's)."""
        if not network_interface_ids:
            return []
        return self._describe({"Name": "network-interface-id", "Values": list(network_interface_ids)})

    def free(self) -> list[dict[str, Any]]:
        return [a for a in self._describe() if not a.get("AssociationId") and not a.get("NetworkInterfaceId")]

    def claim(self, instance_id: str, slots: list[Slot]) -> list[dict[str, Any]]:
        """Gives every slot a pool address; returns them in the slots' order. Idempotent: a slot that
        already carries a pool address keeps it. Raises PoolExhausted when the pool runs out, leaving
        the addresses claimed so far associated (the caller decides whether to give them back).

        Concurrent launches race for the same free addresses: each Lambda lists the free ones, then
        associates. The association is the claim, and EC2 makes it atomic: with
        AllowReassociation=False, associating an address that another Lambda associated a moment
        earlier fails with Resource.AlreadyAssociated, and this one moves on to the next candidate.
        The list is shuffled so that launches starting together mostly try different addresses
        first. Two runs for the same instance (a duplicated event) race for the same slot instead:
        EC2 keeps one address per private address (associating a second one disassociates the
        first), so after associating, the slot is read back and whatever pool address it carries
        now is the slot's; a displaced one is free again.
        """
        held = self._by_slot(slots)
        missing = [s for s in slots if s not in held]
        if missing:
            candidates = sorted(self.free(), key=lambda a: a["AllocationId"])
            self.shuffle(candidates)
            if len(candidates) < len(missing):
                raise PoolExhausted(
                    f"{instance_id} needs {len(missing)} more Elastic IP(s) tagged {self.tag_key}={self.tag_value} "
                    f"(it needs {len(slots)}, holds {len(slots) - len(missing)}); {len(candidates)} free")
            for slot in missing:
                held[slot] = self._claim_one(instance_id, slot, candidates, len(slots))
        return [held[s] for s in slots]

    def _claim_one(self, instance_id: str, slot: Slot, candidates: list[dict[str, Any]], wanted: int) -> dict[str, Any]:
        while candidates:
            allocation = candidates.pop(0)["AllocationId"]
            try:
                self.ec2.associate_address(AllocationId=allocation, NetworkInterfaceId=slot.network_interface_id,
                                           PrivateIpAddress=slot.private_ip, AllowReassociation=False)
            except ClientError as e:
                if _error_code(e) != "Resource.AlreadyAssociated":
                    raise
                # Taken meanwhile: by another launch, or by a concurrent run for this instance
                # that has filled this very slot (then keep its address rather than displace it).
                current = self._by_slot([slot]).get(slot)
                if current is not None:
                    log.info("%s: %s got %s from a concurrent run for this instance",
                             instance_id, slot.private_ip, current["AllocationId"])
                    self.label(current["AllocationId"], instance_id)
                    return current
                log.info("%s: %s was claimed by a concurrent launch, trying the next address", instance_id, allocation)
                continue
            current = self._by_slot([slot]).get(slot)
            if current is None:
                log.warning("%s: %s is no longer on %s, trying the next address", instance_id, allocation, slot.private_ip)
                continue
            if current["AllocationId"] != allocation:
                log.warning("%s: %s already carries %s (a concurrent run for this instance); %s is free again",
                            instance_id, slot.private_ip, current["AllocationId"], allocation)
            self.label(current["AllocationId"], instance_id)
            return current
        raise PoolExhausted(
            f"{instance_id}: the pool tagged {self.tag_key}={self.tag_value} ran out while claiming "
            f"{wanted} address(es): concurrent launches took the free ones")

    def _by_slot(self, slots: list[Slot]) -> dict[Slot, dict[str, Any]]:
        enis = sorted({s.network_interface_id for s in slots})
        on = {Slot(a["NetworkInterfaceId"], a.get("PrivateIpAddress", "")): a for a in self.held_on(enis)}
        return {s: on[s] for s in slots if s in on}

    def release(self, instance_id: str, network_interface_ids: list[str]) -> list[dict[str, Any]]:
        """Disassociates every pool address of the instance's interfaces and clears the claim labels
        naming it. Returns the addresses released."""
        held = self.held_on(network_interface_ids)
        for address in held:
            try:
                self.ec2.disassociate_address(AssociationId=address["AssociationId"])
            except ClientError as e:
                # Gone already: EC2 disassociates by itself when an instance terminates.
                if _error_code(e) not in ("InvalidAssociationID.NotFound", "InvalidAssociationID.Malformed"):
                    raise
        # Also clears labels left on addresses this instance no longer holds.
        labelled = self.ec2.describe_addresses(
            Filters=[{"Name": f"tag:{CLAIM_TAG}", "Values": [instance_id]}]
        )["Addresses"]
        for address in labelled:
            self.ec2.delete_tags(Resources=[address["AllocationId"]], Tags=[{"Key": CLAIM_TAG}])
        return held

    def label(self, allocation: str, instance_id: str) -> None:
        try:
            self.ec2.create_tags(Resources=[allocation], Tags=[{"Key": CLAIM_TAG, "Value": instance_id}])
        except ClientError as e:
            # A label only: the association already holds the claim.
            log.warning("%s: could not label %s: %s", instance_id, allocation, e)


class Lifecycle:
    """Runs one lifecycle action to completion. See the module doc for the two sequences."""

    def __init__(
        self,
        config: Config,
        ec2: Any,
        autoscaling: Any,
        elbv2: Any = None,
        ssm: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        shuffle: Callable[[list], None] | None = None,
    ):
        self.config = config
        self.ec2 = ec2
        self.autoscaling = autoscaling
        self.elbv2 = elbv2
        self.ssm = ssm
        self.sleep = sleep
        self.clock = clock
        self.pool = EipPool(ec2, config.pool_tag_key, config.pool_tag_value, shuffle)

    def handle(self, action: LifecycleAction) -> str:
        if self.config.asg_name and action.asg_name != self.config.asg_name:
            log.warning("ignoring a lifecycle action of group %r (this function serves %r)",
                        action.asg_name, self.config.asg_name)
            return "ignored"
        if not action.instance_id:
            log.warning("ignoring an event without an instance (%s)", action.transition)
            return "ignored"
        if action.transition == LAUNCHING:
            return self.on_launch(action)
        if action.transition == TERMINATING:
            return self.on_terminate(action)
        log.info("ignoring lifecycle transition %r", action.transition)
        return "ignored"

    # --- launch -----------------------------------------------------------------------------

    def on_launch(self, action: LifecycleAction) -> str:
        """Also the retry path (EventBridge or Lambda retry, a re-run by hand): slots that carry a
        pool address keep it, only the missing ones are claimed, and the rest is idempotent."""
        iid = action.instance_id
        instance = self._wait_until_running(iid)
        if instance is None:
            log.warning("%s: the instance is gone before it got its addresses; abandoning its launch", iid)
            self._complete(action, "ABANDON")
            return "gone"
        try:
            slots = egress_slots(instance, self.config.egress_addresses)
            held = self.pool.claim(iid, slots)
        except (PoolExhausted, TooFewPrivateAddresses) as e:
            # An abandoned launch is terminated; its addresses go back now rather than with it.
            for address in self.pool.release(iid, instance_interfaces(instance)):
                log.info("%s: gave back %s", iid, _describe(address))
            if isinstance(e, PoolExhausted):
                log.error("%s: EIP POOL EXHAUSTED, abandoning the launch: %s. Allocate more addresses with the "
                          "pool tag (and allowlist them upstream), or lower the group's MaxSize or EgressAddresses.",
                          iid, e)
            else:
                log.error("%s: abandoning the launch: %s", iid, e)
            self._complete(action, "ABANDON")
            raise
        log.info("%s: egress addresses %s", iid, ", ".join(_describe(a) for a in held))
        self._targets("register", iid)
        self._complete(action, "CONTINUE")
        return "launched"

    def _wait_until_running(self, instance_id: str) -> dict[str, Any] | None:
        """The instance once it runs, or None if it is gone. An address can be associated with a
        running instance only; right after launch it may still be pending, or not yet visible to
        DescribeInstances."""
        deadline = self.clock() + self.config.instance_wait_seconds
        while True:
            instance = self._instance(instance_id)
            state = instance["State"]["Name"] if instance else None
            if state == "running":
                return instance
            if state not in ("pending", None):
                return None
            if self.clock() >= deadline:
                raise TimeoutError(f"{instance_id} still {state or 'invisible'} after "
                                   f"{self.config.instance_wait_seconds:.0f}s")
            self.sleep(self.config.poll_seconds)

    def _instance(self, instance_id: str) -> dict[str, Any] | None:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as e:
            if _error_code(e) == "InvalidInstanceID.NotFound":
                return None
            raise
        for r in reservations:
            for i in r["Instances"]:
                return i
        return None

    # --- terminate --------------------------------------------------------------------------

    def on_terminate(self, action: LifecycleAction) -> str:
        iid = action.instance_id
        self._targets("deregister", iid)
        status = self._drain(iid)
        # Still running in Terminating:Wait; once terminated, EC2 has disassociated its addresses.
        released = self.pool.release(iid, instance_interfaces(self._instance(iid)))
        for address in released:
            log.info("%s: returned %s to the pool", iid, _describe(address))
        if not released:
            log.info("%s: held no pool address", iid)
        self._complete(action, "CONTINUE")
        return f"terminated (drain: {status})"

    def _drain(self, instance_id: str) -> str:
        """Stops l4relay on the instance and waits until it has exited.

        `systemctl stop` returns when the drain is over (drain.announce + deadline + close_spread)
        or when systemd's TimeoutStopSec killed it. If the command cannot run (the SSM agent is not
        registered: an instance that never finished booting), there is nothing to drain worth
        waiting for; the instance's own shutdown still sends SIGTERM.
        """
        doc = self.config.drain_document
        if not doc or self.ssm is None:
            log.warning("%s: no drain document configured, not stopping l4relay first", instance_id)
            return "skipped"
        try:
            command = self.ssm.send_command(
                InstanceIds=[instance_id],
                DocumentName=doc,
                Comment="l4relay: drain before termination",
                TimeoutSeconds=60,  # for delivery; the document bounds the run itself
            )["Command"]
        except ClientError as e:
            log.error("%s: could not send the drain command (%s); terminating without it", instance_id, e)
            return "not-sent"
        command_id = command["CommandId"]
        log.info("%s: draining (SSM command %s)", instance_id, command_id)
        deadline = self.clock() + self.config.drain_wait_seconds
        while True:
            status = self._command_status(command_id, instance_id)
            if status in SSM_FINAL:
                (log.info if status == "Success" else log.error)("%s: drain command %s", instance_id, status)
                return status
            if self.clock() >= deadline:
                log.error("%s: drain command still %s after %.0fs; releasing the address anyway",
                          instance_id, status, self.config.drain_wait_seconds)
                return f"waited-out ({status})"
            self.sleep(self.config.poll_seconds)

    def _command_status(self, command_id: str, instance_id: str) -> str:
        try:
            return self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)["Status"]
        except ClientError as e:
            if _error_code(e) == "InvocationDoesNotExist":  # not visible yet, right after sending
                return "Pending"
            raise

    # --- shared -----------------------------------------------------------------------------

    def _targets(self, verb: str, instance_id: str) -> None:
        """(De)registers the instance on every relay port of the target group.

        The group's TargetGroupARNs registers the instance on the target group's own port only, and
        one NLB target (IP:port) carries about 55,000 connections: each further port is one more
        target, registered here. Registering is idempotent. Deregistering goes one port at a time,
        so that a port the group already took out (it deregisters the first port itself) cannot
        make the call fail for the others and leave them taking new connections during the drain.
        """
        arn, ports = self.config.target_group_arn, self.config.relay_ports
        if not arn or not ports or self.elbv2 is None:
            return
        if verb == "register":
            self.elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": instance_id, "Port": p} for p in ports])
            log.info("%s: registered ports %s", instance_id, ",".join(map(str, ports)))
            return
        for port in ports:
            try:
                self.elbv2.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": instance_id, "Port": port}])
            except ClientError as e:
                log.warning("%s: deregistering port %d: %s", instance_id, port, e)
        log.info("%s: deregistered ports %s", instance_id, ",".join(map(str, ports)))

    def _complete(self, action: LifecycleAction, result: str) -> bool:
        kwargs = dict(
            LifecycleHookName=action.hook_name,
            AutoScalingGroupName=action.asg_name,
            LifecycleActionResult=result,
            InstanceId=action.instance_id,
        )
        if action.token:
            kwargs["LifecycleActionToken"] = action.token
        try:
            self.autoscaling.complete_lifecycle_action(**kwargs)
        except ClientError as e:
            # A retried event whose action was completed before, or whose hook timed out.
            if _error_code(e) == "ValidationError" and "No active Lifecycle Action" in str(e):
                log.info("%s: lifecycle action already completed (%s not sent)", action.instance_id, result)
                return False
            raise
        log.info("%s: completed %s with %s", action.instance_id, action.hook_name, result)
        return True


def handler(event: dict[str, Any], context: Any) -> str:
    config = Config.from_env()
    lifecycle = Lifecycle(
        config,
        ec2=boto3.client("ec2"),
        autoscaling=boto3.client("autoscaling"),
        elbv2=boto3.client("elbv2"),
        ssm=boto3.client("ssm"),
    )
    return lifecycle.handle(LifecycleAction.from_event(event))
