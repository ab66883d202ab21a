"""benchmarks/repair_seeds.py: object pixels seeded background become unsure, nothing else changes."""

import numpy as np

from conftest import load_benchmark


def test_repair_against_a_pixel_loop():
    repair = load_benchmark("repair_seeds").repair
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 4, (12, 9)).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.1] = 255
    seed = rng.integers(0, 4, mask.shape).astype(np.uint8)
    seed[rng.random(mask.shape) < 0.3] = 255
    expected = seed.copy()
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            if mask[y, x] not in (0, 255) and seed[y, x] == 0:
                expected[y, x] = 255
    out = repair(seed, mask)
    np.testing.assert_array_equal(out, expected)
    assert (out != seed).any() and out.dtype == seed.dtype
    np.testing.assert_array_equal(seed[(mask == 0) | (mask == 255)], out[(mask == 0) | (mask == 255)])
