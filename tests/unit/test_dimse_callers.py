"""dimse.callers: the addresses a known AE title may call from."""

from __future__ import annotations

from pixport.config import RemoteNode
from pixport.dimse.callers import _normal, permitted_addresses


def test_addresses_of_every_node_of_a_title_by_name_or_number() -> None:
    permitted = permitted_addresses(
        [
            RemoteNode(ae_title="PACS", host="10.0.0.5", port=104),
            RemoteNode(ae_title="PACS ", host="localhost", port=104),  # a second node, same title
            RemoteNode(ae_title="CT1", host="::ffff:192.0.2.7", port=104),
            RemoteNode(ae_title="GONE", host="no-such-host.invalid", port=104),
        ]
    )
    assert {"10.0.0.5", "127.0.0.1"} <= permitted["PACS"]
    assert permitted["CT1"] == frozenset({"192.0.2.7"})
    assert permitted["GONE"] == frozenset()  # known, so refused from anywhere until it resolves


def test_addresses_are_compared_in_one_form() -> None:
    assert _normal("::ffff:10.1.2.3") == "10.1.2.3"
    assert _normal("fe80::1%eth0") == "fe80::1"
    assert _normal("2001:DB8::1") == "2001:db8::1"
    assert _normal("not an address") == "not an address"
