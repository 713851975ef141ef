"""Pooling over channels-last maps (compile.schedules.pool_rules): schedule shape and PyTorch's numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compile.schedules.pool_rules import channel_chunk

pytest.importorskip("tvm")


def test_channel_chunks_divide_the_channels_in_whole_vectors():
    assert channel_chunk(120, 8) == 40 and channel_chunk(72, 8) == 24 and channel_chunk(960, 8) == 64
    assert channel_chunk(16, 8) == 16 and channel_chunk(1280, 16) == 128
    assert channel_chunk(20, 8) is None  # not whole vectors: left to dlight's reduction rule
    for c in (16, 72, 120, 480, 672, 960, 1280):
        k = channel_chunk(c, 8)
        assert c % k == 0 and k % 8 == 0 and k <= 64


class _Squeeze(nn.Module):
    """A conv (so the map is channels-last after layout conversion), an SE-style squeeze, and a pooled output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 40, 3, 1, 1), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)  # ResNet's stem pool: padding, a 3x3 window, stride 2

    def forward(self, x):
        y = self.conv(x)
        return {"scaled": y * torch.sigmoid(y.mean((2, 3), keepdim=True)), "pooled": y.mean((2, 3)),
                "max": self.pool(y)}


def test_pools_over_channels_last_maps_are_vectorized_and_match_pytorch():
    from tvm import tirx

    from compile.cpu_pipeline import schedule_module
    from compile.targets import get_preset
    from compile.tuning import build, export_relax

    torch.manual_seed(0)
    net = _Squeeze().eval()
    mod, params = export_relax(net, (4, 3, 28, 28), "squeeze")  # batches up to 4
    target = get_preset("host").tvm_target()
    sched = schedule_module(mod, target)
    pools = [f.script() for gv, f in sched.functions_items()
             if isinstance(f, tirx.PrimFunc) and gv.name_hint.startswith(("mean", "max_pool"))]
    assert len(pools) >= 2, "the means and the max pool are kernels of their own"
    for script in pools:
        # one vector of accumulators per chunk of channels, walking the pixels in memory order
        assert "T.parallel" in script and "T.vectorized" in script and 'scope="local"' in script
    compiled = build(mod, params, target, schedule="rules")
    for batch in (1, 3):
        x = np.random.RandomState(batch).rand(batch, 3, 28, 28).astype("float32")
        got = compiled.run_numpy(x)
        with torch.no_grad():
            want = net(torch.from_numpy(x))
        for g, w in zip(got, want.values()):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)
