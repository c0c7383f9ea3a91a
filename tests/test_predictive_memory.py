"""PredictiveMemoryManager: learns a decode loop's requests, hits after warm-up, falls back cleanly."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optim.predictive_memory import PredictiveMemoryManager, predict_next
from optim.tensor_pool import PoolError, TensorPool


def decode_like_requests(step: int, batch: int = 2):
    """A decode step's allocations: fixed activations plus attention scores growing by one token."""
    return [
        ((batch, 1, 64), torch.bfloat16),
        ((batch, 4, 1, 32 + step), torch.float32),
        ((batch, 1, 256), torch.bfloat16),
        ((batch, 1, 64), torch.bfloat16),
    ]


def run_steps(mgr, steps, requests=decode_like_requests):
    for i in range(steps):
        with mgr.step():
            got = []
            for shape, dtype in requests(i):
                t = mgr.get(shape, dtype)
                assert tuple(t.shape) == shape and t.dtype == dtype
                got.append(t)
            for t in got:
                mgr.put(t)


def test_predict_next_extrapolates_steady_growth_and_repeats_otherwise():
    f32 = torch.float32
    assert predict_next(None, [((2, 3), f32)]) == [((2, 3), f32)]
    assert predict_next([((1, 10), f32)], [((1, 11), f32)]) == [((1, 12), f32)]
    assert predict_next([((1, 10), f32)], [((1, 11), torch.int8)]) == [((1, 11), torch.int8)]
    assert predict_next([((5,), f32)], [((2,), f32)]) == [((2,), f32)]  # would shrink below 1
    assert predict_next([((1,), f32)], [((1,), f32), ((2,), f32)]) == [((1,), f32), ((2,), f32)]


def test_decode_loop_hits_after_two_steps_of_learning():
    pool = TensorPool()
    mgr = PredictiveMemoryManager(pool)
    run_steps(mgr, 20)
    s = mgr.stats()
    assert s.steps == 20 and s.requests == 80
    # step 0: nothing known (4 misses); step 1: repeats step 0, the growing tensor misses (1 miss)
    assert s.misses == 5 and s.hits == 75 and s.hit_rate == pytest.approx(75 / 80)
    assert s.wasted == 1  # the step-1 guess for the growing tensor
    mgr.close()
    assert pool.stats().bytes_in_use == 0  # everything prepared went back
    pool.check_invariants()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), max_size=5), min_size=1, max_size=8))
def test_any_request_pattern_is_served_and_accounted(pattern):
    pool = TensorPool()
    mgr = PredictiveMemoryManager(pool)
    run_steps(mgr, len(pattern), lambda i: [(shape, torch.float32) for shape in pattern[i]])
    s = mgr.stats()
    assert s.hits + s.misses == s.requests == sum(map(len, pattern))
    assert s.hits <= s.prefetched
    mgr.close()
    assert pool.stats().bytes_in_use == 0 and pool.stats().blocks_in_use == 0
    pool.check_invariants()


def test_prefetch_respects_the_pool_bound_and_misses_fall_back():
    pool = TensorPool(max_bytes=8 * 1024)
    mgr = PredictiveMemoryManager(pool)
    big = [((1024,), torch.float32)] * 3  # 3 x 4 KiB: only two fit under the bound
    with mgr.step():
        held = [mgr.get(*r) for r in big[:2]]
        for t in held:
            mgr.put(t)
    with mgr.step():  # the prediction for this step asks for two blocks; both fit
        t = mgr.get(*big[0])
        mgr.put(t)
    assert pool.stats().bytes_held <= 8 * 1024
    mgr.close()
    pool.check_invariants()


def test_misuse_gives_clear_errors():
    pool = TensorPool(max_bytes=4096)
    mgr = PredictiveMemoryManager(pool)
    with pytest.raises(RuntimeError, match="outside a step"):
        mgr.get((4,))
    with pytest.raises(RuntimeError, match="without begin_step"):
        mgr.end_step()
    mgr.begin_step()
    with pytest.raises(RuntimeError, match="twice"):
        mgr.begin_step()
    with pytest.raises(PoolError, match="shape"):
        mgr.get((0, 3))
    with pytest.raises(PoolError, match="larger than the pool bound"):
        mgr.get((4096,), torch.float32)
    mgr.end_step()
    s = mgr.stats()
    assert s.requests == 0 and s.misses == 0  # refused requests are not counted as served
    pool.check_invariants()
