"""Connections to Kafka, Redis and the web port, built from the settings (SPEC §9).

Every client kpistream opens (the worker's faust app, its edge reader, the admin client, the
generator, ``top`` and the client library) gets its options here, so PLAINTEXT, SSL (with an
optional client certificate) and SASL PLAIN/SCRAM work the same everywhere.

``check_kafka`` and ``check_redis`` open one connection before anything starts and turn what
goes wrong into a :class:`ConnectionCheckError` that names the cause (wrong password, unknown
CA, expired certificate, unreachable host). Clients left to themselves retry such errors
forever: aiokafka logs "Unable to bootstrap" without the reason, redis-py raises per command.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from aiokafka.conn import create_conn
from aiokafka.errors import AuthenticationFailedError, KafkaError, SaslAuthenticationFailed
from cryptography import x509
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from kpistream.exceptions import KpistreamError
from kpistream.settings import Settings
from kpistream.sinks.profiles import PROFILE_SCRIPT, profile_payload

if TYPE_CHECKING:
    from aiohttp import web
    from faust.types.auth import CredentialsT

CHECK_TIMEOUT_S = 15.0  # one connection attempt; a worker names a failure well within 30 s
PROBE_TIMEOUT_S = 3.0
REACH_WITHIN_S = 20.0  # how long a broker that refuses connections is waited for at start


class ConnectionCheckError(KpistreamError):
    """A service refused kpistream's connection for a reason retrying will not fix, or (with
    ``unreachable``) did not answer at all within the time allowed."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


# --- Kafka -------------------------------------------------------------------------------

def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS context for SSL and SASL_SSL: the broker verified against ``kafka_ssl_cafile``
    (or the system's CAs), and a client certificate when one is configured (mTLS)."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None,
                                password=_key_password(settings.kafka_ssl_key_password
                                                       .get_secret_value()))
    return context


def _key_password(password: str) -> Any:
    """``load_cert_chain``'s password: a callable, so that OpenSSL never prompts on the
    terminal for an encrypted key's pass phrase (a worker hung there, or failed with
    "Invalid argument" without a terminal); an encrypted key without one fails to load."""
    return lambda: password


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every aiokafka client (consumer, producer, admin)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return options


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """The same security for faust's own consumer and producer (``broker_credentials``)."""
    from faust.auth import SASLCredentials, SSLCredentials  # the client library needs no faust
    context = kafka_ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    if context is not None:
        return SSLCredentials(context)
    return None


def _first_broker(settings: Settings) -> tuple[str, int]:
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    return host.strip("[]"), int(port)


async def check_kafka(settings: Settings) -> None:
    """One connection to the first bootstrap broker, with TLS and SASL as configured."""
    host, port = _first_broker(settings)
    where = f"Kafka at {host}:{port} ({settings.kafka_security_protocol})"
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        check_tls_files(where, TlsFiles(
            ("KPISTREAM_KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
            ("KPISTREAM_KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
            ("KPISTREAM_KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile),
            ("KPISTREAM_KAFKA_SSL_KEY_PASSWORD",
             settings.kafka_ssl_key_password.get_secret_value())))
    options = kafka_options(settings)
    options.pop("bootstrap_servers")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REACH_WITHIN_S
    while True:
        try:
            await _connect_once(settings, host, port, where, options)
            return
        except _Unreachable as exc:
            # A broker starting up refuses connections for a while: retry, then give up
            # naming the address (a wrong credential or certificate fails at once).
            if loop.time() >= deadline:
                raise ConnectionCheckError(
                    f"cannot reach Kafka at {host}:{port} within {REACH_WITHIN_S:.0f} s: "
                    f"{exc}", unreachable=True) from None
            await asyncio.sleep(1)


class _Unreachable(Exception):
    pass


async def _connect_once(settings: Settings, host: str, port: int, where: str,
                        options: dict[str, Any]) -> None:
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(CHECK_TIMEOUT_S * 1000), **options),
            CHECK_TIMEOUT_S)
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        raise ConnectionCheckError(
            f"{where}: SASL authentication of user {settings.kafka_sasl_username!r} with "
            f"{settings.kafka_sasl_mechanism} failed (wrong username or password?): {exc}"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectionCheckError(f"{where}: TLS handshake failed: {_ssl_reason(exc)}"
                                   ) from None
    except TimeoutError:
        raise ConnectionCheckError(
            f"{where}: no answer within {CHECK_TIMEOUT_S:.0f} s (a TLS listener spoken to in "
            "PLAINTEXT, or the reverse, looks like this too)") from None
    except OSError as exc:  # refused, no route, unknown host: not (yet) reachable
        raise _Unreachable(_reason(exc)) from None
    except KafkaError as exc:
        # A broker that rejects a client certificate (expired, unknown CA) closes the
        # connection, and aiokafka reports only that; a bare TLS handshake hears the alert.
        hint = await asyncio.to_thread(_tls_probe, host, port, options.get("ssl_context"))
        raise ConnectionCheckError(f"{where}: {hint or _reason(exc)}") from None
    conn.close()


def _tls_probe(host: str, port: int, context: ssl.SSLContext | None,
               plaintext_hint: str = "the listener speaks TLS: set "
               "KPISTREAM_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL") -> str | None:
    """Why a TLS listener dropped us, or (``plaintext_hint``) that a client without TLS
    reached a TLS listener."""
    probe = context
    if probe is None:
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw, \
                probe.wrap_socket(raw, server_hostname=host) as tls:
            if context is None:
                return plaintext_hint
            tls.recv(1)  # TLS 1.3 sends a rejected client certificate's alert after the handshake
    except ssl.SSLError as exc:
        return None if context is None else f"TLS: {_ssl_reason(exc)}"
    except OSError:
        return None
    return None


# --- Redis -------------------------------------------------------------------------------

def redis_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The URL and the keyword arguments of ``Redis.from_url``: ACL user, password and, for
    ``rediss://``, the CA and client certificate. ``KPISTREAM_REDIS_USERNAME`` and
    ``KPISTREAM_REDIS_PASSWORD`` win over a user and password in the URL (SPEC §9): redis-py
    lets the URL's win over keyword arguments (``from_url`` updates them with the parsed
    URL), so they are taken out of the URL and passed as arguments."""
    url = settings.redis_url.get_secret_value()
    options: dict[str, Any] = {}
    parts = urlsplit(url)
    username = settings.redis_username or unquote(parts.username or "")
    password = settings.redis_password.get_secret_value() or unquote(parts.password or "")
    if "@" in parts.netloc:
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if username:
        options["username"] = username
    if password:
        options["password"] = password
    if url.startswith("rediss://"):
        if settings.redis_ssl_cafile:
            options["ssl_ca_certs"] = settings.redis_ssl_cafile
        if settings.redis_ssl_certfile:
            options.update(ssl_certfile=settings.redis_ssl_certfile,
                           ssl_keyfile=settings.redis_ssl_keyfile)
    return url, options


def redis_client(settings: Settings, *, decode_responses: bool = False,
                 socket_timeout: float | None = None) -> aioredis.Redis:
    """An asyncio Redis client (the worker's one is shared by every sink)."""
    timeout = settings.sink_timeout_s if socket_timeout is None else socket_timeout
    url, options = redis_options(settings)
    return aioredis.Redis.from_url(url, decode_responses=decode_responses,
                                   socket_timeout=timeout, socket_connect_timeout=timeout,
                                   **options)


def redis_sync_client(settings: Settings) -> redis.Redis:
    """A blocking client for commands (``top``)."""
    url, options = redis_options(settings)
    return redis.Redis.from_url(url, decode_responses=True,
                                socket_connect_timeout=CHECK_TIMEOUT_S, **options)


async def check_redis(settings: Settings, *, writes: bool = True) -> None:
    """PING as the configured user; with ``writes`` (a worker), then a write of the sinks'
    kind on a key of the prefix and the profile script on no change (a channel cannot be
    checked without publishing to its subscribers). Commands that only read (``top``,
    ``customers``) run as a read-only user (docs/security.md): PING only."""
    where = f"Redis at {_redis_location(settings)}"
    user = settings.redis_username or "default"
    url, _ = redis_options(settings)
    if url.startswith("rediss://"):
        check_tls_files(where, TlsFiles(
            ("KPISTREAM_REDIS_SSL_CAFILE", settings.redis_ssl_cafile),
            ("KPISTREAM_REDIS_SSL_CERTFILE", settings.redis_ssl_certfile),
            ("KPISTREAM_REDIS_SSL_KEYFILE", settings.redis_ssl_keyfile)))
    client = redis_client(settings, socket_timeout=CHECK_TIMEOUT_S)
    try:
        await client.ping()
        if not writes:
            return
        probe = f"{settings.redis_prefix}:check"
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(probe, "ok", "1")
            pipe.delete(probe)
            await pipe.execute()
        # the profile sink's script, on no change: EVALSHA and SCRIPT LOAD are allowed
        await client.register_script(PROFILE_SCRIPT)(args=[settings.redis_prefix,
                                                          profile_payload([])])
    except AuthenticationError as exc:
        raise ConnectionCheckError(
            f"{where}: authentication of user {user!r} failed (wrong username or password?): "
            f"{exc}") from None
    except ResponseError as exc:
        # NOPERM: the ACL user lacks a key or channel of kpistream (docs/operations.md has
        # the minimal rule).
        raise ConnectionCheckError(f"{where}: user {user!r} lacks a permission: {exc}"
                                   ) from None
    except (RedisError, OSError) as exc:
        cause = exc.__context__ if isinstance(exc.__context__, ssl.SSLError) else exc
        if isinstance(cause, ssl.SSLError):
            raise ConnectionCheckError(f"{where}: {_ssl_reason(cause)}") from None
        # A TLS server drops a client that speaks plain RESP to it: not a server that is down.
        parts = urlsplit(url)
        if not url.startswith("rediss://") and parts.hostname and await asyncio.to_thread(
                _tls_probe, parts.hostname, parts.port or 6379, None, "the server speaks "
                "TLS: use a rediss:// URL (KPISTREAM_REDIS_URL)"):
            raise ConnectionCheckError(f"{where}: the server speaks TLS: use a rediss:// URL "
                                       "(KPISTREAM_REDIS_URL)") from None
        raise ConnectionCheckError(f"cannot reach {where}: {_reason(exc)}",
                                   unreachable=True) from None
    finally:
        await client.aclose()


def _redis_location(settings: Settings) -> str:
    url = settings.redis_url.get_secret_value()
    scheme, _, rest = url.partition("://")
    # user, password and query (``?password=`` is one too) left out
    return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"


# --- web port ----------------------------------------------------------------------------

def web_middlewares(settings: Settings) -> list[Any]:
    """aiohttp middlewares of the worker's web port: HTTP basic auth on every path when
    ``web_username`` is set (Prometheus' ``basic_auth`` scrape option speaks it)."""
    if not settings.web_username:
        return []
    from aiohttp import web  # the worker's web server; the client library needs no aiohttp
    credentials = f"{settings.web_username}:{settings.web_password.get_secret_value()}"
    expected = ("Basic " + base64.b64encode(credentials.encode()).decode()).encode()

    @web.middleware
    async def basic_auth(request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return cast(web.StreamResponse, await handler(request))
        return web.Response(status=401, text="authentication required\n",
                            headers={"WWW-Authenticate": 'Basic realm="kpistream"'})

    return [basic_auth]


def web_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.web_ssl_certfile:
        return None
    check_tls_files("web port", TlsFiles(
        certfile=("KPISTREAM_WEB_SSL_CERTFILE", settings.web_ssl_certfile),
        keyfile=("KPISTREAM_WEB_SSL_KEYFILE", settings.web_ssl_keyfile)))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.web_ssl_certfile, settings.web_ssl_keyfile or None,
                            password=_key_password(""))
    return context


# --- reasons -----------------------------------------------------------------------------

Setting = tuple[str, str]  # (environment variable, its value)
NOT_SET: Setting = ("", "")


@dataclass(frozen=True)
class TlsFiles:
    """A client's or server's TLS files as configured, each with the setting it came from."""

    cafile: Setting = NOT_SET
    certfile: Setting = NOT_SET
    keyfile: Setting = NOT_SET
    key_password: Setting = NOT_SET


def check_tls_files(where: str, files: TlsFiles) -> None:
    """Load the TLS files before any connection, so that a missing, unreadable or encrypted
    one fails at once naming its setting (SPEC §9). Left to the client libraries, a missing
    CA file reads "No such file or directory" as if the server were unreachable (and redis-py
    retries it forever), and an encrypted key prompts for its pass phrase on the terminal."""
    (ca_setting, cafile), (cert_setting, certfile) = files.cafile, files.certfile
    (key_setting, keyfile), (password_setting, password) = files.keyfile, files.key_password
    try:
        context = ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionCheckError(f"{where}: {ca_setting}={cafile} is not a readable CA "
                                   f"bundle (PEM): {_ssl_reason(exc)}") from None
    if not certfile:
        return
    _check_certificate(cert_setting, certfile, where)
    key_path = keyfile or certfile
    key_named = f"{key_setting}={keyfile}" if keyfile else f"{cert_setting}={certfile}"
    try:
        with open(key_path, "rb") as file:
            encrypted = b"ENCRYPTED" in file.read()
    except OSError as exc:
        raise ConnectionCheckError(f"{where}: {key_named} cannot be read: {_reason(exc)}"
                                   ) from None
    try:
        context.load_cert_chain(certfile, keyfile or None, password=_key_password(password))
    except (OSError, ssl.SSLError) as exc:
        if encrypted and not password:
            hint = (f"the key is encrypted: set {password_setting} (or {password_setting}_FILE)"
                    if password_setting else "the key is encrypted, which is not supported "
                    "here: give it unencrypted")
        elif encrypted:
            hint = f"{password_setting} does not decrypt the key"
        else:
            hint = f"the key does not match {cert_setting}={certfile}"
        raise ConnectionCheckError(f"{where}: {key_named}: {hint} ({_ssl_reason(exc)})"
                                   ) from None

def _check_certificate(setting: str, path: str, where: str) -> None:
    """Our own certificate, read before use: a server that rejects an expired client
    certificate often says only "certificate unknown"."""
    if not path:
        return
    try:
        with open(path, "rb") as file:
            certificate = x509.load_pem_x509_certificate(file.read())
    except (OSError, ValueError) as exc:
        raise ConnectionCheckError(f"{where}: {setting}={path} is not a readable PEM "
                                   f"certificate: {exc}") from None
    now = datetime.now(UTC)
    if certificate.not_valid_after_utc <= now:
        raise ConnectionCheckError(
            f"{where}: {setting}={path}: the certificate expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if certificate.not_valid_before_utc > now:
        raise ConnectionCheckError(
            f"{where}: {setting}={path}: the certificate is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")


def _ssl_reason(exc: BaseException) -> str:
    """``certificate verify failed: certificate has expired`` rather than the errno soup."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message} (check the CA file)"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = exc.reason.lower().replace("_", " ")
        if "certificate expired" in reason:
            return f"the server rejected our client certificate: {reason}"
        return reason
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
