"""ice.py hooks aioice; this fails loudly if an aioice upgrade moves the hook."""

from __future__ import annotations

import aioice.ice

from relay_app.ice import use_host_addresses


def test_ice_addresses_hook_replaces_aioice_host_addresses() -> None:
    assert callable(aioice.ice.get_host_addresses), "aioice.ice.get_host_addresses is gone"
    try:
        use_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    finally:
        use_host_addresses(["127.0.0.1"])  # what the rest of the suite uses
