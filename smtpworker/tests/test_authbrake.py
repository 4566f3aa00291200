"""The AUTH brake's keys, counts and memory, and the password pool's caps (issue 10.4)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import redis

from smtpworker.core.config import AuthBrakeConfig
from smtpworker.inbound import authbrake
from smtpworker.inbound.authbrake import AuthBrake, LocalBrake, client_key
from smtpworker.inbound.authpool import PoolBusy, VerifyPool

CFG = AuthBrakeConfig(failures_before_delay=2, block_after_failures=3, window_seconds=60)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("[2001:DB8:1:2::5]", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_a_client_key_refuses_what_is_not_an_address() -> None:
    for text in ("", "example.com", "2001:db8::/64x", "1.2.3.4\x00"):
        with pytest.raises(ValueError):
            client_key(text)


def test_the_addresses_of_one_64_share_one_count() -> None:
    brake = LocalBrake()
    now = 1000.0
    for n in range(3):
        brake.failure("S", client_key(f"2001:db8:0:1::{n + 1:x}"), CFG, now)
    assert brake.blocked_until("S", client_key("2001:db8:0:1:abcd::9"), now) == now + 900
    assert brake.blocked_until("S", client_key("2001:db8:0:2::1"), now) == 0.0
    assert brake.blocked_until("Other", client_key("2001:db8:0:1::1"), now) == 0.0


def test_failures_older_than_the_window_start_a_new_count() -> None:
    brake = LocalBrake()
    brake.failure("S", "192.0.2.1", CFG, 0.0)
    brake.failure("S", "192.0.2.1", CFG, 30.0)
    assert brake.failure("S", "192.0.2.1", CFG, 61.0).failures == 1  # the window began at 0
    assert brake.blocked_until("S", "192.0.2.1", 61.0) == 0.0


def test_the_local_brake_never_drops_a_blocked_entry() -> None:
    brake = LocalBrake(capacity=100)
    for _ in range(3):
        brake.failure("S", "192.0.2.1", CFG, 1.0)
    for n in range(10_001):  # other clients fail once each, far past the capacity
        brake.failure("S", f"10.0.{n >> 8}.{n & 255}", CFG, 2.0)
    assert brake.blocked_until("S", "192.0.2.1", 3.0) == 901.0
    assert len(brake._records) <= 101  # memory stays bounded by the loose entries
    assert brake.blocked_until("S", "192.0.2.1", 902.0) == 0.0  # and the block does end


def test_the_shared_brake_counts_in_redis_lists_and_unblocks(redis_url: str) -> None:
    async def scenario() -> list[tuple[float, bool]]:
        brake = AuthBrake(redis_url, delay=0.5, max_delay=4)
        try:
            results = [await brake.failure("S", "192.0.2.1", CFG) for _ in range(3)]
            other = AuthBrake(redis_url)  # another process of the node sees the block
            assert await other.blocked_until("S", "192.0.2.1") > 0
            assert await other.blocked_until("T", "192.0.2.1") == 0  # another server does not
            await other.close()
            return results
        finally:
            await brake.close()

    results = asyncio.run(scenario())
    assert results == [(0.0, False), (0.0, False), (0.0, True)]
    client = redis.Redis.from_url(redis_url)
    try:
        assert [c for c, _ in authbrake.list_blocks(client, "S")] == ["192.0.2.1"]
        assert authbrake.list_blocks(client, "T") == []
        assert authbrake.unblock(client, "S", "192.0.2.1") == "192.0.2.1"
        assert authbrake.list_blocks(client, "S") == []
        assert not client.exists(authbrake.client_hash_key("S", "192.0.2.1"))
        # The key of a block never outlives it, and lives as long as it.
        asyncio.run(_fail_times(redis_url, 3))
        ttl = client.ttl(authbrake.client_hash_key("S", "192.0.2.1"))
        assert 899 <= ttl <= 901
    finally:
        client.close()


async def _fail_times(redis_url: str, times: int) -> None:
    brake = AuthBrake(redis_url)
    for _ in range(times):
        await brake.failure("S", "192.0.2.1", CFG)
    await brake.close()


def test_wrong_passwords_past_the_free_ones_wait_longer_and_longer() -> None:
    cfg = AuthBrakeConfig(failures_before_delay=1, block_after_failures=10)

    async def waits() -> list[float]:
        brake = AuthBrake(delay=0.5, max_delay=2)
        return [(await brake.failure("S", "192.0.2.1", cfg))[0] for _ in range(5)]

    assert asyncio.run(waits()) == [0.0, 0.5, 1.0, 2.0, 2.0]


def test_the_password_pool_caps_each_client_and_the_total() -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "done"

    async def scenario() -> None:
        pool = VerifyPool(1, per_client=2, total=3)
        first = [asyncio.ensure_future(pool.run("a", slow)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(PoolBusy):
            await pool.run("a", slow)  # a third check of the same client
        third = asyncio.ensure_future(pool.run("b", slow))
        await asyncio.sleep(0)
        with pytest.raises(PoolBusy):
            await pool.run("c", slow)  # a first check of another, past the total
        release.set()
        assert await asyncio.gather(*first, third) == ["done"] * 3
        await asyncio.sleep(0.05)  # the releases come back through the loop
        assert pool.in_flight == 0
        assert await pool.run("c", slow) == "done"
        pool.shutdown()

    asyncio.run(scenario())


def test_the_password_pool_is_not_the_spool_pool() -> None:
    async def names() -> str:
        pool = VerifyPool(1)
        name = await pool.run("a", lambda: threading.current_thread().name)
        pool.shutdown()
        return name

    assert asyncio.run(names()).startswith("smtp-auth")


def test_the_password_threads_yield_the_cpu_to_mail() -> None:
    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def nice_in_pool() -> int:
        pool = VerifyPool(1)
        value = await pool.run("a", own_nice)
        pool.shutdown()
        return value

    assert asyncio.run(nice_in_pool()) == min(19, own_nice() + 10)
