from __future__ import annotations

import httpx
import pytest
import torch

from .helpers import API_KEY, Reference, Server, base_config


@pytest.fixture(scope="session")
def reference() -> Reference:
    torch.set_num_threads(1)
    return Reference()


@pytest.fixture(scope="session")
def torch_server(tmp_path_factory):
    """One torch-backed server for the whole session (start-up costs seconds on 2 shared cores)."""
    srv = Server(base_config(), tmp_path_factory.mktemp("torch-server"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(torch_server):
    with httpx.Client(base_url=torch_server.url, headers={"X-API-Key": API_KEY}, timeout=120) as c:
        yield c
