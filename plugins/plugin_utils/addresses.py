"""What the collection's plugins count as an IP address and as a network, defined once.

Used by the test plugins ip_address and ip_network, the test dns_name (a name is never an
address) and the filter host_addresses. Non-strings are simply not addresses; zone ids
(fe80::1%eth0) and netmask prefixes (10.0.0.0/255.0.0.0) are refused, since nftables and the
server's settings take neither.
"""

from __future__ import annotations

import ipaddress


def is_ip_address(value) -> bool:
    """An IPv4 or IPv6 address, without a prefix."""
    if not isinstance(value, str) or "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_ip_network(value) -> bool:
    """An address or a CIDR network, IPv4 or IPv6; host bits may be set (10.0.0.1/24)."""
    if not isinstance(value, str) or "%" in value:
        return False
    _, slash, prefix = value.partition("/")
    if slash and not (prefix.isascii() and prefix.isdigit()):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True
