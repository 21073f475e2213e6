"""Who may open an association: an allow-list of calling AE titles and addresses.

The check runs on EVT_REQUESTED, before pynetdicom negotiates anything, and
answers an unknown caller with A-ASSOCIATE-RJ rejected-permanent, service user,
reason 3 ("calling AE title not recognised"), the answer pynetdicom's own
``require_calling_aet`` gives. That option alone cannot check addresses, so
the node does both checks here, in one place that also logs and counts.
An AE title from an address it is not allowed at gets the same answer: the
sender is told nothing about which part failed. Logs carry AE titles and IP
addresses only, never anything from a dataset.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence

from pynetdicom import evt

from deid_node.logs import get_logger
from deid_node.security_config import AllowedCaller

log = get_logger("deid_node.access")

REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_CALLING_AE_NOT_RECOGNISED = 0x03


class AccessControl:
    """The allow-list and its rejection counter (shared by all SCP threads)."""

    def __init__(self, callers: Sequence[AllowedCaller]) -> None:
        self._callers = {c.ae_title: c.hosts for c in callers}
        self._lock = threading.Lock()
        self.rejected = 0

    @property
    def open(self) -> bool:
        """No allow-list configured: every caller is accepted."""
        return not self._callers

    def allows(self, calling_ae: str, address: str) -> bool:
        if self.open:
            return True
        ae = calling_ae.strip()
        if ae not in self._callers:
            return False
        hosts = self._callers[ae]
        if not hosts:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.5 on a dual-stack socket
        return any(ip.version == net.version and ip in net for net in hosts)

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED handler: reject a caller that is not on the list."""
        assoc = event.assoc
        calling_ae = str(assoc.requestor.primitive.calling_ae_title or "").strip()
        address = str(assoc.requestor.address or "")
        if self.allows(calling_ae, address):
            return
        with self._lock:
            self.rejected += 1
            total = self.rejected
        log.warning(
            "association_rejected",
            reason="calling AE title not recognised",
            calling_ae=calling_ae,
            address=address,
            rejected_total=total,
        )
        assoc.acse.send_reject(
            REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNISED
        )
        # As pynetdicom does after its own rejections: wait until the DUL has
        # sent the A-ASSOCIATE-RJ before the connection is closed.
        assoc.kill()
