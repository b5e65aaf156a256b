"""TLS for the client and HTTP ports: ssl contexts built from certificate
files, the one-line diagnosis of a failed handshake, and the throwaway CA of
`raftq dev --tls`.

Both sides require TLS 1.2 or newer. The server presents `tls_cert`/`tls_key`
from the cluster config and, when `tls_client_ca` is set, requires a client
certificate signed by that CA (mutual TLS). A client verifies the node's
certificate against its CA file and checks it names the host it dialled (an
IP address must be in the certificate's subjectAltName).

Every problem with a file is a `TlsFileError` (a ValueError) whose message is
one line naming the setting and the file; the cluster config turns it into a
ConfigError, the client into a `TlsError`.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cluster.errors import Unavailable

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class TlsError(Unavailable):
    """Client side: TLS could not be set up with a node (certificate not
    trusted or not for this host, client certificate refused or missing,
    TLS on one side only, unreadable certificate files). A configuration
    problem, so it is raised at once instead of being retried."""


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; one-line message."""


# ---------------------------------------------------------------- contexts


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server context presenting cert/key (the config's tls_cert, tls_key).

    With `client_ca` the node asks for a client certificate and a certificate
    that is sent must verify against that CA, or the handshake fails. Its
    absence does not fail the handshake (CERT_OPTIONAL): the listener refuses
    such a connection itself (`asks_client_certificates`), with an error the
    client can read; a failed handshake only closes the socket (asyncio and
    uvloop drop the TLS alert), which a client cannot tell from a crash.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    _load_chain(ctx, cert, key, "tls_cert", "tls_key")
    if client_ca is not None:
        _load_ca(ctx, client_ca, "tls_client_ca")
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def asks_client_certificates(ctx: ssl.SSLContext | None) -> bool:
    """Whether a port served with `ctx` has mutual TLS on, so its listener must
    refuse a connection whose peer sent no certificate (`server_context`)."""
    return ctx is not None and ctx.verify_mode != ssl.CERT_NONE


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS settings: the CA that signed the nodes' certificates
    (None: the system's trust store) and, for mutual TLS, a client certificate
    and its key (None: the key is in the certificate file)."""

    ca: Path | str | None = None
    cert: Path | str | None = None
    key: Path | str | None = None

    def __post_init__(self) -> None:
        if self.key is not None and self.cert is None:
            raise TlsError("a TLS client key needs its certificate: pass --tls-cert as well as --tls-key")

    def context(self) -> ssl.SSLContext:
        """The ssl context; TlsError naming the file if one cannot be used."""
        # Both verify the chain and the host name; with a CA file, only that CA
        # is trusted (not the system's as well).
        if self.ca is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = MIN_VERSION
        try:
            if self.ca is not None:
                _load_ca(ctx, Path(self.ca), "--tls-ca")
            if self.cert is not None:
                key_label = "--tls-key" if self.key is not None else "--tls-key (not given, so from --tls-cert)"
                _load_chain(ctx, Path(self.cert), Path(self.key or self.cert), "--tls-cert", key_label)
        except TlsFileError as exc:
            raise TlsError(str(exc)) from None
        return ctx


def _readable(path: Path, label: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise TlsFileError(f"{label}: file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise TlsFileError(f"{label}: {str(path)!r} is a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsFileError(f"{label}: cannot read {str(path)!r}: {exc.strerror or exc}") from None


def _encrypted_key(label: str, path: Path) -> NoReturn:
    # Called by OpenSSL instead of prompting on the terminal for a passphrase.
    raise TlsFileError(f"{label}: {str(path)!r} is an encrypted key; give raftq an unencrypted one "
                       "(readable by the service user only)")


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, cert_label: str, key_label: str) -> None:
    _readable(cert, cert_label)
    _readable(key, key_label)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: _encrypted_key(key_label, key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsFileError(f"{key_label}: the key in {str(key)!r} does not match the certificate in "
                               f"{str(cert)!r}") from None
        if _loads_as_certificate(cert):
            raise TlsFileError(f"{key_label}: {str(key)!r} holds no usable PEM private key") from None
        raise TlsFileError(f"{cert_label}: {str(cert)!r} is not a PEM certificate") from None


def _loads_as_certificate(path: Path) -> bool:
    try:
        ssl.PEM_cert_to_DER_cert(path.read_text("ascii", errors="replace"))
        return True
    except (ValueError, OSError):
        return False


def _load_ca(ctx: ssl.SSLContext, ca: Path, label: str) -> None:
    _readable(ca, label)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError:
        raise TlsFileError(f"{label}: {str(ca)!r} holds no PEM CA certificate") from None


# ---------------------------------------------------------------- diagnosis


def probe_speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether host:port completes a TLS handshake (nothing verified).

    Run by a plaintext client whose hello went unanswered: a TLS listener
    closes such a connection without a word, and this tells that apart from
    a node that is going away. Blocking; AsyncClient runs it in a thread.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return True
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return False
    except ssl.SSLError as exc:  # an alert from the peer: it speaks TLS, just not with us
        return (exc.reason or "").upper() not in _NOT_TLS_REASONS
    except OSError:
        return False


_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNKNOWN_PROTOCOL",
                    "HTTP_REQUEST")


def speaks_tls(addr: str) -> TlsError:
    return TlsError(f"the node at {addr} speaks TLS: pass --tls-ca (the CA of the node certificates) "
                    "[env RAFTQ_TLS_CA], or tls=ClientTls(...) to the client")


def client_certificate_refused(addr: str) -> TlsError:
    """A node with mutual TLS closes the connection of a client whose
    certificate did not verify, without a word (see `server_context`)."""
    return TlsError(f"the node at {addr} closed the TLS connection without answering: it did not accept our "
                    "client certificate (--tls-cert must be signed by the CA in the node's tls_client_ca)")


def handshake_error(addr: str, exc: ssl.SSLError) -> TlsError | None:
    """The TlsError for a failed TLS exchange with `addr`, or None when it is
    a plain connection loss (EOF, reset) that a retry elsewhere may cure."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLWantWriteError)):
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        if exc.verify_code == 62 or "mismatch" in why.lower():  # X509_V_ERR_HOSTNAME/IP_ADDRESS_MISMATCH
            return TlsError(f"the certificate of the node at {addr} is not valid for that address ({why}): "
                            "its subjectAltName must include the host or IP clients dial")
        return TlsError(f"the certificate of the node at {addr} is not trusted ({why}): "
                        "pass --tls-ca with the CA that signed the node certificates")
    reason = (exc.reason or "").upper()
    if reason in _NOT_TLS_REASONS:
        return TlsError(f"the node at {addr} does not speak TLS (its client port is plain TCP): "
                        "drop --tls-ca/--tls-cert, or configure tls_cert/tls_key on the nodes")
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or "HANDSHAKE_FAILURE" in reason:
        return TlsError(f"the node at {addr} requires a client certificate (mutual TLS): "
                        "pass --tls-cert and --tls-key [env RAFTQ_TLS_CERT, RAFTQ_TLS_KEY]")
    if reason.startswith(("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE",
                          "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR")):
        return TlsError(f"the node at {addr} refused our client certificate ({exc.reason}): "
                        "it must be signed by the CA in the node's tls_client_ca")
    return TlsError(f"TLS with the node at {addr} failed: {exc.reason or exc}")


# ---------------------------------------------------------------- dev certificates


@dataclass(frozen=True)
class DevCerts:
    """Files of a throwaway PKI: one CA, one node certificate for every
    node (its SAN lists the loopback addresses), one client certificate."""

    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path


DEV_CERT_DAYS = 30


def make_dev_certs(directory: Path, hosts: list[str]) -> DevCerts:
    """Write a new CA and certificates under `directory` (keys mode 0600).

    For `raftq dev` only: the CA key is thrown away, so nothing else can ever
    be signed by it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=DEV_CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("raftq dev CA")).issuer_name(name("raftq dev CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=True, crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    node_sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            node_sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            node_sans.append(x509.DNSName(host))
    node_cert, node_key = leaf("raftq dev node", ExtendedKeyUsageOID.SERVER_AUTH, node_sans)
    client_cert, client_key = leaf("raftq dev client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    directory.mkdir(parents=True, exist_ok=True)
    certs = DevCerts(ca=directory / "ca.pem", node_cert=directory / "node.pem", node_key=directory / "node.key",
                     client_cert=directory / "client.pem", client_key=directory / "client.key")
    _write(certs.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(certs.node_cert, node_cert, 0o644)
    _write(certs.node_key, node_key, 0o600)
    _write(certs.client_cert, client_cert, 0o644)
    _write(certs.client_key, client_key, 0o600)
    return certs


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
