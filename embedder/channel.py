"""Client side of `embedder/grpc/auth.py`: channels in plaintext or TLS (with a client certificate for
mTLS), and the API key sent as `authorization: Bearer <key>` metadata on every call.

Kept apart from the clients so the blocking and the asyncio client build channels the same way, and
apart from `auth.py`, which is server code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client talks to the server. The default is plaintext without a key."""

    tls: bool = False
    # PEM roots that signed the server's certificate; None with tls=True = the system's roots.
    root_certificates: bytes | None = None
    # mTLS: the client's certificate chain and key (PEM), both or neither.
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    # The name the server's certificate carries, when it differs from the address (e.g. an IP).
    server_name: str = ""
    api_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key (mTLS) go together")
        uses_tls = self.root_certificates or self.certificate_chain or self.server_name
        if uses_tls and not self.tls:
            raise ValueError("TLS settings given with tls=False")

    @classmethod
    def from_files(
        cls,
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        server_name: str = "",
        api_key: str = "",
    ) -> ChannelSecurity:
        """TLS when `ca_file` is given (PEM paths); mTLS when `cert_file` and `key_file` are too."""

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(
            tls=bool(ca_file),
            root_certificates=read(ca_file),
            certificate_chain=read(cert_file),
            private_key=read(key_file),
            server_name=server_name,
            api_key=api_key,
        )

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Per-call metadata: the API key, if any."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else None

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def _options(self, options: ChannelOptions) -> list[tuple[str, Any]]:
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return [*options, *extra]

    def channel(self, address: str, options: ChannelOptions = ()) -> grpc.Channel:
        """A blocking channel to `address`."""
        if not self.tls:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(address, self._credentials(), options=self._options(options))

    def aio_channel(self, address: str, options: ChannelOptions = ()) -> grpc.aio.Channel:
        """An asyncio channel to `address` (create it inside the running loop)."""
        if not self.tls:
            return grpc.aio.insecure_channel(address, options=list(options))
        return grpc.aio.secure_channel(address, self._credentials(), options=self._options(options))
