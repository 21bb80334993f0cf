"""Issue 14's float16 cast (inf/NaN told on the float16 bits by two max passes) against numpy's own conversion over
all 65536 float16 bit patterns (every NaN payload, both infs, both zeros, every subnormal), shuffled into blocks that
mix them at random places, contiguous and strided, on 4 threads at once (each with its own scratch buffers), with
and without denormals-are-zero on the casting thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from actstore.store import chunk_read
from actstore.store.chunk_read import float32_into, to_float32

EVERY = np.arange(1 << 16, dtype=np.uint16)


def _cases(seed: int) -> list[np.ndarray]:
    """float16 arrays: every pattern shuffled; finite ones with one inf/NaN at a random place; strided views."""
    rng = np.random.default_rng(seed)
    every = EVERY[rng.permutation(EVERY.size)].view(np.float16)
    finite_bits = EVERY[(EVERY & 0x7C00) != 0x7C00]
    out = [every.reshape(-1, 64), every.reshape(-1, 16, 4)[:, 3:11, 1:3], every[::-2].reshape(-1, 8)[::2, 1:6]]
    for _ in range(6):
        a = rng.choice(finite_bits, size=3 * chunk_read._CAST_BLOCK // 2 + int(rng.integers(0, 999)))
        bad = rng.choice(EVERY[(EVERY & 0x7C00) == 0x7C00])
        a[int(rng.integers(0, a.size))] = bad
        out.append(a.view(np.float16).reshape(-1, 1))
    out.append(rng.choice(finite_bits, size=(3000, 5, 7)).view(np.float16)[:, ::2, 1:])
    return out


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def _check(array: np.ndarray) -> None:
    want = _bits(array.astype(np.float32))
    got = np.empty(array.shape, dtype=np.float32)
    float32_into(array, got)
    np.testing.assert_array_equal(_bits(got), want)
    np.testing.assert_array_equal(_bits(to_float32(array)), want)


@pytest.mark.parametrize("daz", [False, True])
def test_every_pattern_casts_as_numpy_does_on_four_threads(daz):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(seed: int) -> None:
        try:
            torch.set_flush_denormal(daz)  # this thread's MXCSR only
            barrier.wait()
            for array in _cases(seed):
                _check(array)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            torch.set_flush_denormal(False)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
