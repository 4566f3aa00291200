"""A real DNS server on loopback for tests: UDP and TCP on one 127.0.0.1 port.

The zone is a plain dict, names without the trailing dot::

    zone = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.1"]},
        "nullmx.test": {"MX": [(0, ".")]},
        "alias.test": {"CNAME": ["example.test."]},
    }
    with DnsServer(zone) as dns_server:
        resolve(hop, dns_servers=[dns_server.address], timeout=2)

MX values are ``(preference, host)`` pairs; any other type takes rdata text. Unknown
names get NXDOMAIN, known names without the type an empty NOERROR answer. ``mode``
switches at run time: ``"answer"``, ``"servfail"`` (every query) or ``"silent"`` (no
reply, so the client times out); ``servfail_names`` fails single names. ``queries``
records every (name, type) asked, so a test can prove no lookup happened. The zone may
be changed while the server runs (assign ``server.zone``).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = Mapping[str, Mapping[str, Sequence[Any]]]
MODES = ("answer", "servfail", "silent")
TTL = 60


class DnsServer:
    def __init__(self, zone: Zone | None = None, *, host: str = "127.0.0.1") -> None:
        self.zone: Zone = zone or {}
        self.host = host
        self.mode = "answer"
        self.servfail_names: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    @property
    def address(self) -> str:
        """The "ip:port" text for ``DeliveryConfig.dns_servers``."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsServer:
        udp, tcp = self._bind()
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._servers, self._threads = [], []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> tuple[socketserver.BaseServer, socketserver.BaseServer]:
        # UDP takes a free port; TCP must get the same number, which someone may hold.
        for _attempt in range(20):
            udp = _UdpServer((self.host, 0), _UdpHandler, dns_server=self)
            port = udp.server_address[1]
            try:
                tcp = _TcpServer((self.host, port), _TcpHandler, dns_server=self)
            except OSError:
                udp.server_close()
                continue
            self.port = int(port)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    def answer(self, wire: bytes) -> bytes | None:
        """The response to one query in wire form, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not DNS: a real server would drop it too
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.mode == "servfail" or name in self.servfail_names:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            self._fill(response, name, question.rdtype)
        return response.to_wire()

    def _fill(
        self, response: dns.message.Message, name: str, rdtype: dns.rdatatype.RdataType
    ) -> None:
        for _hop in range(8):  # follow CNAMEs inside the zone, as a recursive server would
            node = self.zone.get(name)
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                return
            wanted = dns.rdatatype.to_text(rdtype)
            if wanted in node:
                response.answer.append(_rrset(name, wanted, node[wanted]))
                return
            if "CNAME" not in node:
                return  # NOERROR, no data
            response.answer.append(_rrset(name, "CNAME", node["CNAME"]))
            name = str(node["CNAME"][0]).rstrip(".").lower()


def _rrset(name: str, rdtype: str, values: Sequence[Any]) -> dns.rrset.RRset:
    texts = []
    for value in values:
        if rdtype == "MX":
            preference, host = value
            texts.append(f"{preference} {_absolute(host)}")
        elif rdtype in ("CNAME", "NS", "PTR"):
            texts.append(_absolute(str(value)))
        else:
            texts.append(str(value))
    return dns.rrset.from_text_list(dns.name.from_text(name), TTL, "IN", rdtype, texts)


def _absolute(host: str) -> str:
    return host if host.endswith(".") else host + "."


class _UdpServer(socketserver.UDPServer):
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], handler: Any, *, dns_server: DnsServer) -> None:
        self.dns_server = dns_server
        super().__init__(address, handler)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, *, dns_server: DnsServer) -> None:
        self.dns_server = dns_server
        super().__init__(address, handler)


class _UdpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns_server.answer(data)  # type: ignore[attr-defined]
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        try:
            while True:  # RFC 7766: a client may send several queries on one connection
                header = _read(sock, 2)
                if header is None:
                    return
                wire = _read(sock, struct.unpack("!H", header)[0])
                if wire is None:
                    return
                reply = self.server.dns_server.answer(wire)  # type: ignore[attr-defined]
                if reply is None:
                    return
                sock.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _read(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
