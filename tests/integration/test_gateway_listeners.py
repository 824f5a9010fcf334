"""A gateway with a separate listener for the hub: each listener serves only its own paths."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from dimse_support import free_port
from network_support import Network, running_network

from pixport.samples import HOSPITALS

HANBIT = HOSPITALS[0]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    hub_access_port = free_port()
    settings = {"PIXPORT_GATEWAY__HUB_ACCESS_PORT": str(hub_access_port), "PIXPORT_HTTP__WORKERS": "2"}
    with running_network(tmp_path_factory.mktemp("listeners"), [(HANBIT, settings)]) as network:
        yield network


def _hub_access_url(network: Network) -> str:
    return f"http://127.0.0.1:{network.gateways[HANBIT.code].env['PIXPORT_GATEWAY__HUB_ACCESS_PORT']}"


def test_the_hubs_listener_serves_nothing_anonymous(network: Network) -> None:
    exposed = _hub_access_url(network)
    for path in ("/dicomweb/studies", "/gateway/publications", "/wado?requestType=WADO"):
        refused = httpx.get(exposed + path, timeout=30)
        assert refused.status_code == 404, path
        assert refused.json()["detail"] == "not served on this listener"
    assert httpx.get(exposed + "/healthz", timeout=30).status_code == 200
    # The hub's own paths are there, behind the hub's assertion.
    study = network.gateways[HANBIT.code].studies[0]
    unauthenticated = httpx.get(f"{exposed}/hub-access/dicomweb/studies/{study}", timeout=30)
    assert unauthenticated.status_code == 401


def test_the_hospitals_listener_does_not_serve_the_hubs_paths(network: Network) -> None:
    internal = network.gateways[HANBIT.code].url
    assert httpx.get(internal + "/dicomweb/studies", timeout=30).status_code == 200
    study = network.gateways[HANBIT.code].studies[0]
    refused = httpx.get(f"{internal}/hub-access/dicomweb/studies/{study}", timeout=30)
    assert refused.status_code == 404
    assert refused.json()["detail"] == "not served on this listener"


def test_publish_and_retrieve_through_the_hub_use_the_hubs_listener(network: Network) -> None:
    gateway = network.gateways[HANBIT.code]
    study = gateway.studies[0]
    published = httpx.post(f"{gateway.url}/gateway/publications", json={"study_instance_uid": study}, timeout=120)
    assert published.status_code == 201, published.text
    through_hub = network.hub_get(network.operator, "operator", f"/dicomweb/studies/{study}")
    assert through_hub.status_code == 200, through_hub.text
    direct = httpx.get(f"{gateway.url}/dicomweb/studies/{study}", timeout=60)
    assert direct.status_code == 200
    assert sorted(_parts(through_hub)) == sorted(_parts(direct))


def _parts(response: httpx.Response) -> list[bytes]:
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    return [
        chunk.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")
        for chunk in response.content.split(b"--" + boundary.encode())[1:-1]
    ]
