"""convhub bench machinery: same inputs for every backend, ratios, failures reported, plug-in backends, plot."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def module():
    import hub

    return hub.load("efficientnet-lite0", progress=False).eval()


def test_interleaved_results_ratios_and_plugins(module, tmp_path):
    from compile import bench

    seen: dict[str, list[np.ndarray]] = {"echo": []}

    def echo_factory(ctx, batch):
        def run(x):
            seen["echo"].append(x)
            return module(__import__("torch").from_numpy(x))
        return bench.Runner(run, note="test backend")

    def broken_factory(ctx, batch):
        raise RuntimeError("this backend cannot build")

    bench.register_backend("echo", echo_factory)
    bench.register_backend("broken", broken_factory)
    try:
        res = bench.benchmark("efficientnet-lite0", ["torch", "echo", "broken"], [1, 2], module=module, size=64,
                              rounds=2, seconds=0.05)
    finally:
        bench.BACKENDS.pop("echo")
        bench.BACKENDS.pop("broken")
    assert [(r.backend, r.batch) for r in res] == [(b, n) for n in (1, 2) for b in ("torch", "echo", "broken")]
    for batch in (1, 2):
        ok = [r for r in res if r.batch == batch and r.error is None]
        assert len(ok) == 2 and min(r.ratio_to_fastest for r in ok) == 1.0
        assert all(r.ratio_to_fastest >= 1.0 and r.runs >= 2 and r.p99_ms >= r.p50_ms for r in ok)
        assert all(abs(r.images_per_s - batch / (r.p50_ms / 1e3)) < 1e-6 * r.images_per_s for r in ok)
        broken = next(r for r in res if r.batch == batch and r.backend == "broken")
        assert broken.error and "cannot build" in broken.error and broken.runs == 0
    # every call of one batch size got the very same array (same inputs for all backends)
    shapes = {x.shape for x in seen["echo"]}
    assert shapes == {(1, 3, 64, 64), (2, 3, 64, 64)}
    assert all(np.array_equal(x, seen["echo"][-1]) for x in seen["echo"] if x.shape == (2, 3, 64, 64))
    table = bench.format_table(res, "t")
    assert "| broken | 1 |" in table and "failed: RuntimeError" in table
    png = bench.plot(res, tmp_path / "b.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_backend_is_a_user_error(module):
    from compile import bench

    with pytest.raises(ValueError, match="unknown backend.*available"):
        bench.benchmark("efficientnet-lite0", ["torch", "nope"], [1], module=module, size=64)
