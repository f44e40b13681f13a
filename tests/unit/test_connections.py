"""Connection options built from the settings (SPEC §9), without services: every protocol
gives aiokafka and faust the same security, Redis gets its ACL user and TLS files, and the
web port's basic auth admits exactly the configured user."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kpistream.connections import (
    ConnectionCheckError,
    check_kafka,
    check_redis,
    faust_broker_credentials,
    kafka_options,
    kafka_ssl_context,
    redis_options,
    web_middlewares,
    web_ssl_context,
)
from kpistream.settings import Settings


def make_certificate(directory: Path, *, days: float) -> tuple[Path, Path]:
    """A self-signed certificate valid from an hour ago for ``days`` (negative: expired)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.now(UTC) - timedelta(hours=1)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start if days > 0 else start - timedelta(days=2))
                   .not_valid_after(start + timedelta(days=days))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_plaintext_is_the_default() -> None:
    options = kafka_options(Settings())
    assert options == {"bootstrap_servers": "localhost:9092", "security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(Settings()) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_gives_aiokafka_and_faust_the_same_user(mechanism: str, tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path, days=30)
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism,
                        kafka_sasl_username="svc", kafka_sasl_password="pw",
                        kafka_ssl_cafile=str(cert))
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"],
            options["sasl_plain_password"]) == (mechanism, "svc", "pw")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = faust_broker_credentials(settings)
    assert credentials is not None
    assert credentials.protocol.value == "SASL_SSL"  # type: ignore[attr-defined]
    assert credentials.mechanism.value == mechanism  # type: ignore[attr-defined]
    assert "pw" not in repr(credentials)


def test_sasl_plaintext_has_no_tls() -> None:
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc",
                        kafka_sasl_password="pw")
    assert "ssl_context" not in kafka_options(settings)
    credentials = faust_broker_credentials(settings)
    assert credentials is not None and credentials.protocol.value == "SASL_PLAINTEXT"  # type: ignore[attr-defined]


def test_ssl_with_a_client_certificate_is_mtls(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, days=30)
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(cert),
                        kafka_ssl_certfile=str(cert), kafka_ssl_keyfile=str(key))
    options = kafka_options(settings)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    credentials = faust_broker_credentials(settings)
    assert credentials is not None and credentials.protocol.value == "SSL"  # type: ignore[attr-defined]


def test_an_expired_client_certificate_is_named_before_connecting(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, days=-1)
    settings = Settings(kafka_bootstrap="127.0.0.1:1", kafka_security_protocol="SSL",
                        kafka_ssl_certfile=str(cert), kafka_ssl_keyfile=str(key))
    with pytest.raises(ConnectionCheckError, match="the certificate expired on"):
        asyncio.run(check_kafka(settings))


def test_tls_files_are_loaded_before_connecting_and_named(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §9: a missing CA file, an encrypted key without its password or with a wrong
    one, and a key of another certificate fail at once naming the setting; never a
    pass-phrase prompt on the terminal."""
    import kpistream.connections

    monkeypatch.setattr(kpistream.connections, "REACH_WITHIN_S", 0.0)  # no retries
    cert, key = make_certificate(tmp_path, days=30)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(key.read_bytes(), None)
                          .private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret")))
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_certificate(other, days=30)

    def kafka(**files: str) -> Settings:
        return Settings(kafka_bootstrap="127.0.0.1:1", kafka_security_protocol="SSL",
                        kafka_ssl_certfile=str(cert), **files)

    cases = {
        "KPISTREAM_KAFKA_SSL_CAFILE=/nonexistent/ca.pem is not a readable CA bundle":
            kafka(kafka_ssl_cafile="/nonexistent/ca.pem", kafka_ssl_keyfile=str(key)),
        "the key is encrypted: set KPISTREAM_KAFKA_SSL_KEY_PASSWORD":
            kafka(kafka_ssl_keyfile=str(encrypted)),
        "KPISTREAM_KAFKA_SSL_KEY_PASSWORD does not decrypt the key":
            kafka(kafka_ssl_keyfile=str(encrypted), kafka_ssl_key_password="wrong"),
        f"KPISTREAM_KAFKA_SSL_KEYFILE={other_key}: the key does not match":
            kafka(kafka_ssl_keyfile=str(other_key)),
        "cannot reach Kafka at 127.0.0.1:1":  # the files load: only the broker is missing
            kafka(kafka_ssl_keyfile=str(encrypted), kafka_ssl_key_password="s3cret"),
    }
    for words, settings in cases.items():
        with pytest.raises(ConnectionCheckError, match=re.escape(words)):
            asyncio.run(check_kafka(settings))
    with pytest.raises(ssl.SSLError):  # the client's own context: an error, not a prompt
        kafka_ssl_context(kafka(kafka_ssl_keyfile=str(encrypted)))
    with pytest.raises(ConnectionCheckError, match=re.escape(
            "KPISTREAM_REDIS_SSL_CAFILE=/nonexistent/ca.pem is not a readable CA bundle")) as e:
        asyncio.run(check_redis(Settings(redis_url="rediss://127.0.0.1:1/0",
                                         redis_ssl_cafile="/nonexistent/ca.pem")))
    assert not e.value.unreachable
    with pytest.raises(ConnectionCheckError, match=re.escape(
            f"web port: KPISTREAM_WEB_SSL_KEYFILE={other_key}: the key does not match")):
        web_ssl_context(Settings(web_ssl_certfile=str(cert), web_ssl_keyfile=str(other_key)))
    assert web_ssl_context(Settings(web_ssl_certfile=str(cert), web_ssl_keyfile=str(key)))


def test_an_unreachable_broker_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import kpistream.connections

    monkeypatch.setattr(kpistream.connections, "REACH_WITHIN_S", 0.0)  # no retries
    with pytest.raises(ConnectionCheckError, match=r"cannot reach Kafka at 127\.0\.0\.1:1") as e:
        asyncio.run(check_kafka(Settings(kafka_bootstrap="127.0.0.1:1")))
    assert e.value.unreachable


def test_redis_user_password_and_tls_files(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path, days=30)
    settings = Settings(redis_url="rediss://cache:6380/0", redis_username="kpistream",
                        redis_password="pw", redis_ssl_cafile=str(cert),
                        redis_ssl_certfile=str(cert), redis_ssl_keyfile=str(key))
    assert redis_options(settings) == ("rediss://cache:6380/0", {
        "username": "kpistream", "password": "pw", "ssl_ca_certs": str(cert),
        "ssl_certfile": str(cert), "ssl_keyfile": str(key)})
    # TLS files mean nothing to a redis:// URL (redis-py would refuse them).
    plain = Settings(redis_url="redis://cache:6379/0", redis_ssl_cafile=str(cert))
    assert redis_options(plain) == ("redis://cache:6379/0", {})


def test_redis_username_and_password_settings_win_over_the_url() -> None:
    """SPEC §9: redis-py's from_url lets a user and password in the URL override keyword
    arguments, so the settings' must not be passed beside them."""
    import redis

    both = Settings(redis_url="redis://urluser:url%40pass@cache:6379/2",
                    redis_username="envuser", redis_password="envpass")
    assert redis_options(both) == ("redis://cache:6379/2",
                                   {"username": "envuser", "password": "envpass"})
    url, options = redis_options(both)
    kwargs = redis.Redis.from_url(url, **options).connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("envuser", "envpass", 2)
    # what a setting leaves out still comes from the URL (unquoted, as redis-py does)
    url_only = Settings(redis_url="redis://urluser:url%40pass@cache:6379/2",
                        redis_password="envpass")
    assert redis_options(url_only)[1] == {"username": "urluser", "password": "envpass"}
    assert redis_options(Settings(redis_url="redis://:p%40ss@cache:6379"))[1] == {
        "password": "p@ss"}


def test_web_basic_auth_admits_only_the_configured_user() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    assert web_middlewares(Settings()) == []
    settings = Settings(web_username="prometheus", web_password="s3cret")

    async def scenario() -> list[int]:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application(middlewares=web_middlewares(settings))
        app.router.add_get("/metrics", metrics)
        async with TestClient(TestServer(app)) as client:
            statuses = []
            for user, password in (("prometheus", "s3cret"), ("prometheus", "wrong"),
                                   ("other", "s3cret"), (None, None)):
                headers = {}
                if user is not None:
                    token = base64.b64encode(f"{user}:{password}".encode()).decode()
                    headers["Authorization"] = f"Basic {token}"
                response = await client.get("/metrics", headers=headers)
                statuses.append(response.status)
                if response.status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Basic")
            return statuses

    assert asyncio.run(scenario()) == [200, 401, 401, 401]


def test_a_command_redis_refuses_is_named_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`top` or `customers` as an ACL user without read rights: the connection check (PING)
    passes, the first read is refused."""
    from redis.exceptions import NoPermissionError

    from kpistream import cli

    def refused(settings: Settings, args: object) -> int:
        raise NoPermissionError("this user has no permissions to run the 'hgetall' command")

    monkeypatch.setitem(cli.COMMANDS, "settings", refused)
    assert cli.main(["settings"]) == 1
    assert "kpistream: Redis refused a command: this user has no permissions" in (
        capsys.readouterr().err)
