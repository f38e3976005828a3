"""Lifecycle hooks of the l4relay autoscaling group: stable egress addresses and an orderly stop.

EventBridge invokes `handler` for the group's two lifecycle hooks (deploy/l4relay.yaml):

  launch     (Pending:Wait)      claim a free Elastic IP from the tagged pool and associate it with
                                 the instance; register the instance on every relay port of the
                                 target group; complete the hook with CONTINUE. No free address:
                                 complete with ABANDON, log an error and raise, so the launch fails
                                 loudly (Lambda Errors metric, the stack's alarm) instead of putting
                                 an instance in service whose egress address the upstream's
                                 firewall does not know.
  terminate  (Terminating:Wait)  deregister every relay port, stop l4relay over SSM (a blocking
                                 `systemctl stop`, which waits out the whole drain), return the
                                 address to the pool, complete the hook with CONTINUE.

Why termination runs in that order: open upstream connections leave through the Elastic IP. Taking
the address away while l4relay drains would cut every stream still running, which is the thing the
drain exists to avoid; so the address goes back only after l4relay has exited. Deregistering every
port first puts the targets in the NLB's `draining` state before /readyz starts failing, so the NLB
stops sending new connections without resetting the open ones.

The pool: an address belongs to it when it carries the pool tag (key and value from the stack's
parameters), and it is free when EC2 says it is associated with nothing. EC2's association is the
only source of truth. The `l4relay:instance-id` tag written on a claim is a label for operators;
a stale one (a crash between two calls) is overwritten by the next claim and changes nothing.

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
    """No address of the pool could be claimed for a launching instance."""


@dataclass(frozen=True)
class Config:
    pool_tag_key: str
    pool_tag_value: str
    # Events for any other group are ignored (the EventBridge rule already filters on it).
    asg_name: str | None = None
    target_group_arn: str | None = None
    relay_ports: tuple[int, ...] = ()
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
        return cls(
            pool_tag_key=env["POOL_TAG_KEY"],
            pool_tag_value=env["POOL_TAG_VALUE"],
            asg_name=env.get("ASG_NAME") or None,
            target_group_arn=env.get("TARGET_GROUP_ARN") or None,
            relay_ports=ports,
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


def _error_code(e: ClientError) -> str:
    return e.response.get("Error", {}).get("Code", "")


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

    def held_by(self, instance_id: str) -> dict[str, Any] | None:
        """The pool address associated with the instance now, if any."""
        held = self._describe({"Name": "instance-id", "Values": [instance_id]})
        return held[0] if held else None

    def free(self) -> list[dict[str, Any]]:
        return [a for a in self._describe() if not a.get("AssociationId") and not a.get("NetworkInterfaceId")]

    def claim(self, instance_id: str) -> dict[str, Any]:
        """Associates a free pool address with the instance; raises PoolExhausted if none is left.

        Concurrent launches race for the same free addresses: each Lambda lists the free ones, then
        associates. The association is the claim, and EC2 makes it atomic: with
        AllowReassociation=False, associating an address that another Lambda associated a moment
        earlier fails with Resource.AlreadyAssociated, and this one moves on to the next candidate.
        The list is shuffled so that launches starting together mostly try different addresses
        first. After associating, the address is read back and kept only if it names this instance:
        the same check that a tag-based claim would need, and cheap insurance.
        """
        candidates = sorted(self.free(), key=lambda a: a["AllocationId"])
        self.shuffle(candidates)
        for address in candidates:
            allocation = address["AllocationId"]
            try:
                self.ec2.associate_address(AllocationId=allocation, InstanceId=instance_id, AllowReassociation=False)
            except ClientError as e:
                if _error_code(e) == "Resource.AlreadyAssociated":
                    log.info("%s: %s was claimed by a concurrent launch, trying the next address", instance_id, allocation)
                    continue
                raise
            current = self.ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
            if current.get("InstanceId") != instance_id:
                log.warning("%s: %s is now associated with %s, trying the next address",
                            instance_id, allocation, current.get("InstanceId"))
                continue
            self.label(allocation, instance_id)
            return current
        raise PoolExhausted(
            f"no free Elastic IP tagged {self.tag_key}={self.tag_value} for {instance_id} "
            f"({len(candidates)} looked free, all were taken)"
        )

    def release(self, instance_id: str) -> dict[str, Any] | None:
        """Disassociates the instance's pool address and marks it free. Returns it, or None."""
        held = self.held_by(instance_id)
        if held is not None:
            try:
                self.ec2.disassociate_address(AssociationId=held["AssociationId"])
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
        iid = action.instance_id
        held = self.pool.held_by(iid)
        if held is not None:
            # A retried event (EventBridge or Lambda retry, or a re-run by hand): the claim was
            # made; finish whatever came after it.
            log.info("%s: already holds %s (%s)", iid, held["AllocationId"], held.get("PublicIp"))
            self.pool.label(held["AllocationId"], iid)
        else:
            if not self._wait_until_running(iid):
                log.warning("%s: the instance is gone before it got an address; abandoning its launch", iid)
                self._complete(action, "ABANDON")
                return "gone"
            try:
                held = self.pool.claim(iid)
            except PoolExhausted as e:
                log.error("%s: EIP POOL EXHAUSTED, abandoning the launch: %s. Allocate more addresses with "
                          "the pool tag (and allowlist them upstream), or lower the group's MaxSize.", iid, e)
                self._complete(action, "ABANDON")
                raise
            log.info("%s: associated %s (%s)", iid, held["AllocationId"], held.get("PublicIp"))
        self._targets("register", iid)
        self._complete(action, "CONTINUE")
        return "launched"

    def _wait_until_running(self, instance_id: str) -> bool:
        """An address can be associated with a running instance only; right after launch it may
        still be pending, or not yet visible to DescribeInstances."""
        deadline = self.clock() + self.config.instance_wait_seconds
        while True:
            state = self._instance_state(instance_id)
            if state == "running":
                return True
            if state not in ("pending", None):
                return False
            if self.clock() >= deadline:
                raise TimeoutError(f"{instance_id} still {state or 'invisible'} after "
                                   f"{self.config.instance_wait_seconds:.0f}s")
            self.sleep(self.config.poll_seconds)

    def _instance_state(self, instance_id: str) -> str | None:
        try:
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as e:
            if _error_code(e) == "InvalidInstanceID.NotFound":
                return None
            raise
        for r in reservations:
            for i in r["Instances"]:
                return i["State"]["Name"]
        return None

    # --- terminate --------------------------------------------------------------------------

    def on_terminate(self, action: LifecycleAction) -> str:
        iid = action.instance_id
        self._targets("deregister", iid)
        status = self._drain(iid)
        released = self.pool.release(iid)
        if released is not None:
            log.info("%s: returned %s (%s) to the pool", iid, released["AllocationId"], released.get("PublicIp"))
        else:
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
