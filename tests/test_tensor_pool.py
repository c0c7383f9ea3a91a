"""TensorPool: shapes/dtypes, exclusive ownership, consistent statistics, the bound, threads, bad input."""

import random
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optim.tensor_pool import PoolError, PoolExhausted, TensorPool, size_class

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int64, torch.bool]


def test_size_class_rounds_up_by_at_most_a_quarter():
    for n in list(range(1, 5000, 7)) + [2**20 + 1, 3 * 2**20, 10**9]:
        c = size_class(n)
        assert c >= n and c >= 512
        assert n <= 512 or c <= 1.25 * n + 1


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
)
def test_get_returns_requested_shape_dtype_device(shape, dtype):
    pool = TensorPool()
    t = pool.get(shape, dtype)
    assert tuple(t.shape) == tuple(shape) and t.dtype == dtype and t.device == pool.device
    assert t.is_contiguous()
    t.fill_(1)  # writable over its whole extent
    pool.put(t)
    again = pool.get(shape, dtype)
    assert again.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()  # reused
    pool.check_invariants()


def test_no_tensor_is_handed_to_two_holders():
    pool = TensorPool()
    rng = random.Random(0)
    live = {}
    for _ in range(400):
        if live and rng.random() < 0.45:
            ptr = rng.choice(list(live))
            pool.put(live.pop(ptr))
        else:
            t = pool.get((rng.randint(1, 300),), rng.choice(DTYPES))
            ptr = t.untyped_storage().data_ptr()
            assert ptr not in live, "a block in use was handed out again"
            live[ptr] = t
    # Regions of live tensors never overlap either.
    spans = sorted((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in live.values())
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b
    pool.check_invariants()


def test_statistics_are_consistent():
    pool = TensorPool()
    a = pool.get((100,), torch.float32)  # miss
    b = pool.get((10, 10), torch.float16)  # miss
    pool.put(a)
    c = pool.get((400,), torch.uint8)  # same 400-byte class as a: hit, any dtype
    s = pool.stats()
    assert (s.requests, s.hits, s.misses, s.returns) == (3, 1, 2, 1)
    assert s.bytes_in_use == 200 + 400 and s.bytes_held == 2 * 512
    assert s.fragmentation == pytest.approx(1 - 600 / 1024)
    pool.put(b), pool.put(c)
    s = pool.stats()
    assert s.bytes_in_use == 0 and s.blocks_in_use == 0 and s.fragmentation == 1.0
    assert pool.clear() == 1024 and pool.stats().bytes_held == 0
    pool.check_invariants()


def test_bound_is_respected_under_a_stress_loop():
    bound = 64 * 1024
    pool = TensorPool(max_bytes=bound)
    rng = random.Random(1)
    live, refused = [], 0
    for _ in range(3000):
        if live and rng.random() < 0.5:
            pool.put(live.pop(rng.randrange(len(live))))
        else:
            try:
                live.append(pool.get((rng.randint(1, 4096),), rng.choice([torch.float32, torch.bfloat16])))
            except PoolExhausted:
                refused += 1
        assert pool.stats().bytes_held <= bound
    s = pool.stats()
    assert s.evictions > 0 and refused == s.refusals
    assert s.requests == s.hits + s.misses
    pool.check_invariants()


def test_thread_safety_under_concurrent_get_put():
    pool = TensorPool(max_bytes=4 * 1024 * 1024)
    errors, seen = [], []
    start = threading.Barrier(4)

    def worker(seed):
        rng = random.Random(seed)
        start.wait()
        mine = []
        try:
            for i in range(600):
                t = pool.get((rng.randint(1, 2048),), torch.float32)
                t.fill_(seed)  # another holder of the same block would overwrite this
                mine.append(t)
                if len(mine) > 4:
                    old = mine.pop(0)
                    if not bool((old == seed).all()):
                        errors.append("a tensor was overwritten by another thread")
                    pool.put(old)
            for t in mine:
                pool.put(t)
        except Exception as exc:  # surfaced below: a thread's exception would vanish otherwise
            errors.append(repr(exc))
        seen.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 4
    s = pool.stats()
    assert s.requests == 2400 == s.returns and s.bytes_in_use == 0
    pool.check_invariants()


def test_borrow_returns_on_exit_even_after_an_error():
    pool = TensorPool()
    with pytest.raises(RuntimeError):
        with pool.borrow((8, 8)) as t:
            assert pool.owns(t)
            raise RuntimeError("boom")
    assert pool.stats().blocks_in_use == 0


@pytest.mark.parametrize("shape", [0, -3, (4, 0), (2, -1), (), "x", (1.5,)])
def test_bad_shapes_are_clear_errors_and_leave_the_pool_unchanged(shape):
    pool = TensorPool()
    keep = pool.get((4,))
    before = pool.stats()
    with pytest.raises(PoolError, match="shape"):
        pool.get(shape)
    assert pool.stats() == before
    pool.put(keep)
    pool.check_invariants()


def test_bad_returns_and_oversized_requests_are_clear_errors():
    pool = TensorPool(max_bytes=4096)
    with pytest.raises(PoolError, match="larger than the pool bound"):
        pool.get((2048,), torch.float32)  # 8 KiB > 4 KiB bound
    t = pool.get((16,), torch.float32)
    with pytest.raises(PoolError, match="not handed out"):
        pool.put(torch.zeros(16))
    with pytest.raises(PoolError, match="dtype"):
        pool.put(t.view(torch.int32))
    with pytest.raises(PoolError, match="device"):
        pool.put(torch.zeros(16, device="meta"))
    with pytest.raises(PoolError, match="dtype must be"):
        pool.get((4,), "float32")
    with pytest.raises(PoolError, match="positive"):
        TensorPool(max_bytes=0)
    pool.check_invariants()
    pool.put(t)  # the failed returns did not take it back
    with pytest.raises(PoolError, match="already returned"):
        pool.put(t)
    s = pool.stats()
    assert (s.requests, s.returns, s.bytes_in_use) == (1, 1, 0)
    pool.check_invariants()


def test_exhausted_pool_refuses_without_changing_state():
    pool = TensorPool(max_bytes=2048)
    held = [pool.get((512,), torch.uint8) for _ in range(4)]
    before = pool.stats()
    with pytest.raises(PoolExhausted, match="in use"):
        pool.get((100,), torch.uint8)
    after = pool.stats()
    assert after.refusals == before.refusals + 1
    assert (after.requests, after.bytes_held, after.bytes_in_use) == (before.requests, before.bytes_held, before.bytes_in_use)
    pool.put(held.pop())
    pool.get((100,), torch.uint8)  # a freed block makes room again
    pool.check_invariants()
