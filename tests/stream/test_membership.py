"""A revocation must be followed by an assignment in time; else the worker is told it lost its group."""

from __future__ import annotations

import asyncio

from stream.membership import GroupMembership, MembershipLost


async def test_a_rebalance_in_time_is_fine_and_a_lost_group_is_reported_once() -> None:
    lost: list[BaseException] = []
    membership = GroupMembership(0.2, on_lost=lost.append)
    membership.revoked()
    await asyncio.sleep(0.1)
    membership.assigned()  # an ordinary rebalance
    await asyncio.sleep(0.2)
    assert lost == [] and membership.healthy

    membership.revoked()
    membership.revoked()  # revocations in a row keep the first deadline
    await asyncio.sleep(0.3)
    assert [type(error) for error in lost] == [MembershipLost] and not membership.healthy
