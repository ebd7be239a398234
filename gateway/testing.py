"""The pytest plugin (entry point `pytest11`, on once scope-gateway is installed): fixtures that
build the gateway of a config as a `gateway.harness.Harness`, which puts requests to the real app
with tokens minted by a throwaway key, upstreams mocked by respx and a fresh grant store for each
request, and asserts decisions::

    def test_a_reader_cannot_create_webhooks(gateway_harness):
        gateway_harness.assert_decision("POST /adyen/management/merchants/M1/webhooks", "403 forbidden", scopes="psp.webhook:read")

The gateway itself is imported when a fixture is first used, not when pytest starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gateway.harness import Harness
    from gateway.settings import Config

_CONFIG_OPTION = "gateway_config"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_CONFIG_OPTION, "the gateway.yaml the gateway_harness fixture builds, relative to the rootdir", default="gateway.yaml")


@pytest.fixture
def make_gateway(request: pytest.FixtureRequest) -> Iterator[Callable[..., Harness]]:
    """A factory: `make_gateway(config, upstream=None)` is the `Harness` of `config` (a `Config`,
    or a gateway.yaml path, relative to the rootdir), closed after the test."""
    from gateway.harness import Harness

    made: list[Harness] = []

    def make(config: Config | str | Path, **options: Any) -> Harness:
        if isinstance(config, (str, Path)):
            config = request.config.rootpath / config
        harness = Harness(config, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def gateway_harness(request: pytest.FixtureRequest, make_gateway: Callable[..., Harness]) -> Harness:
    """The `Harness` of the config the `gateway_config` ini option names (default gateway.yaml)."""
    return make_gateway(request.config.getini(_CONFIG_OPTION))
