"""Every use of pynetdicom's private interfaces, in one place (pynetdicom is pinned to 3.x).

pynetdicom paces each sender with 1 ms polling sleeps and 4 KiB socket reads, and leaves Nagle's
algorithm on. :func:`speed_up` replaces those pieces on one accepted association. :func:`check` runs
when a receiver starts and fails loudly if a pynetdicom release no longer has what these patches
replace, instead of letting the speed-up (or an association loop) silently vanish.
"""

from __future__ import annotations

import logging
import queue
import socket
import types
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

#: seconds pynetdicom's per-association network loop pauses when idle (its default is 0.001)
DUL_LOOP_DELAY = 0.0002
#: the private names the patches below rely on, by class
_REQUIRED = {
    AssociationSocket: ("recv", "socket"),
    Association: ("_run_reactor", "_serve_request", "kill", "_kill", "_reactor_checkpoint", "_is_paused"),
    DULServiceProvider: ("_run_loop_delay", "idle_timer_expired", "receive_pdu"),
}


class PynetdicomIncompatible(RuntimeError):
    """The installed pynetdicom lacks an internal the receiver patches."""


def check() -> None:
    """Raise :class:`PynetdicomIncompatible` unless this pynetdicom has every patched internal."""
    if not pynetdicom.__version__.startswith("3."):
        raise PynetdicomIncompatible(f"pynetdicom {pynetdicom.__version__} installed; 3.x is required")
    import inspect

    for cls, names in _REQUIRED.items():
        source = inspect.getsource(cls)
        missing = [n for n in names if not hasattr(cls, n) and f"self.{n}" not in source]
        if missing:
            version = pynetdicom.__version__
            raise PynetdicomIncompatible(f"pynetdicom {version}: {cls.__name__} lacks {missing}")


def speed_up(assoc: Any) -> None:
    """Install the faster socket reads, TCP_NODELAY and the blocking reactor on one association."""
    dul = assoc.dul
    assoc_socket = dul.socket
    _no_delay(assoc_socket)
    assoc_socket.recv = types.MethodType(_recv_exact, assoc_socket)
    dul._run_loop_delay = DUL_LOOP_DELAY
    assoc._run_reactor = types.MethodType(_association_reactor, assoc)


def _no_delay(assoc_socket: Any) -> None:
    """Send each response at once: with Nagle's algorithm on, a response written in more than one
    piece waits for the peer's delayed ACK (40 ms on Linux) every so often, which a sender that waits
    for each answer (storescu, a PACS answering a C-MOVE) pays on every such instance."""
    sock = getattr(assoc_socket, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _recv_exact(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` in a few large reads instead of 4 KiB ones, ACKing at once.

    Most senders leave Nagle's algorithm on (DCMTK does unless TCP_NODELAY is set in its
    environment): the tail of each C-STORE then waits until we ACK what came before, and a delayed ACK
    costs 40 ms on Linux, on a few percent of instances at random. TCP_QUICKACK after each read
    makes this side ACK immediately (the kernel clears it again by itself, hence every time).
    """
    sock = self.socket
    buf = bytearray(nr_bytes)
    got = 0
    with memoryview(buf) as view:
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if n == 0:  # the peer closed the connection: return what arrived, as pynetdicom does
                break
            got += n
            if _QUICKACK is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:
                    pass
    if got < nr_bytes:
        del buf[got:]
    return buf


#: longest wait for a decoded message before the association loop checks release, abort and timeouts
REACTOR_WAIT = 0.005


def _association_reactor(self: Any) -> None:
    """pynetdicom 3's acceptor loop (``Association._run_reactor``) with a blocking wait on the decoded
    message queue instead of a fixed 1 ms sleep before each poll; every check it makes is kept.

    It only serves C-ECHO and C-STORE here; their handlers never pause the reactor to send requests.
    """
    while not self._kill:
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        try:
            context_id, msg = self.dimse.msg_queue.get(timeout=REACTOR_WAIT)
        except queue.Empty:
            context_id, msg = None, None
        if msg:
            self._serve_request(msg, context_id)
            continue  # the peer usually sends the next request at once: look again before the checks
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return
        if not self.dul.is_alive():
            self.kill()
            return
        if self.dul.idle_timer_expired():
            log.warning("DICOM association idle for too long: aborted")
            self.abort()
            self.kill()
            return
