"""Where the Triton servers are and how to reach them: targets (`host:port`, or `dns:///host:port` for
every address a name resolves to), the channel options, and TLS to them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

DNS_SCHEME = "dns:///"
CHANNEL_ARGS = [
    # Ample for 5,000-document rerank batches and their embeddings; Triton's own default is the same.
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    # A server that restarts is reconnected to within a second, not after gRPC's default backoff
    # (which grows to two minutes): discovery polls it every interval anyway.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    resolve: bool
    """Re-resolve the name and use every address it has (dns:///), rather than one channel to the name."""

    @classmethod
    def parse(cls, text: str) -> Target:
        resolve = text.startswith(DNS_SCHEME)
        rest = text[len(DNS_SCHEME) :] if resolve else text
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not host:port or dns:///host:port")
        return cls(host, int(port), resolve)

    @property
    def address(self) -> str:
        return join(self.host, self.port)


def join(host: str, port: int) -> str:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]:{port}" if is_v6 else f"{host}:{port}"


@dataclass(frozen=True)
class TritonTls:
    """TLS from the router to every Triton shard (PEM files); a client certificate for mutual TLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    """The name the shards' certificate carries, when the router reaches them by IP address (a
    headless Service's endpoints): TLS checks this name instead of the address."""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The same TLS as `client_options`, for a gRPC channel of the router's own."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=None if self.key_file is None else self.key_file.read_bytes(),
            certificate_chain=None if self.cert_file is None else self.cert_file.read_bytes(),
        )

    def client_options(self) -> dict:
        """tritonclient's keywords for a TLS channel."""
        return {
            "ssl": True,
            "root_certificates": str(self.ca_file),
            "private_key": None if self.key_file is None else str(self.key_file),
            "certificate_chain": None if self.cert_file is None else str(self.cert_file),
        }
