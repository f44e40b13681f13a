"""Issue 11 (SPEC §9) on the real secured stack: a broker with SASL_SSL (SCRAM) and mTLS
listeners and ACLs, a Redis with TLS and an ACL user restricted to exactly the rule in
docs/security.md, a worker web port behind basic auth and TLS scraped by a real Prometheus;
rows equal the reference, no secret shows anywhere, and every wrong credential or certificate
makes the worker exit non-zero within 30 s naming the cause."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer
from harness import LOG_DIR, ROOT, Deployment, free_port, normalise, row_mismatches, wait_for_rows
from test_ingest import produce_raw

from kpistream import reference
from kpistream.client import get_row, kafka_updates
from kpistream.generator.traffic import HOUR_MS, TrafficConfig, TrafficGenerator
from kpistream.settings import Settings

pytestmark = pytest.mark.integration
LOCAL = ROOT / ".local"
TLS = LOCAL / "tls"
SASL_SSL = f"127.0.0.1:{os.environ.get('KAFKA_SASL_SSL_PORT', '9094')}"
MTLS = f"127.0.0.1:{os.environ.get('KAFKA_SSL_PORT', '9095')}"
REDIS_TLS = f"rediss://127.0.0.1:{os.environ.get('REDIS_TLS_PORT', '6380')}/0"
EXIT_WITHIN_S = 30.0


def secret(name: str) -> str:
    return (LOCAL / "secrets" / name).read_text().strip()


def redis_admin() -> redis.Redis:
    return redis.Redis.from_url(REDIS_TLS, password=secret("redis-admin"),
                                ssl_ca_certs=str(TLS / "ca.pem"), decode_responses=True)


def admin_settings() -> Settings:
    """Settings that read the secured Redis as its admin (the worker's user may not read)."""
    return Settings(redis_url=REDIS_TLS, redis_password=secret("redis-admin"),
                    redis_ssl_cafile=str(TLS / "ca.pem"))


def documented_acl_rule(user: str, password: str, prefix: str, channels: list[str]) -> list[str]:
    """The minimal rule of docs/security.md, for this deployment's prefix and channels."""
    text = (ROOT / "docs" / "security.md").read_text()
    match = re.search(r"^ACL SETUSER kpistream (.+)$", text, re.MULTILINE)
    assert match, "docs/security.md lost its ACL rule"
    tokens = match.group(1).split()
    assert "~kpi:*" in tokens and "&kpi-updates" in tokens and "&kpi-alerts" in tokens
    out = []
    for token in tokens:
        if token == ">PASSWORD":
            token = f">{password}"
        elif token == "~kpi:*":
            token = f"~{prefix}:*"
        elif token in ("&kpi-updates", "&kpi-alerts"):
            token = f"&{channels[0] if token == '&kpi-updates' else channels[1]}"
        out.append(token)
    return [user, "reset", *out]


def secured(tmp: Path, redis_user: str, redis_password: str,
            web_password: str) -> dict[str, str]:
    (tmp / "redis-password").write_text(redis_password + "\n")
    (tmp / "web-password").write_text(web_password)
    return {
        "KPISTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KPISTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KPISTREAM_KAFKA_SASL_USERNAME": "kpistream",
        "KPISTREAM_KAFKA_SASL_PASSWORD_FILE": str(LOCAL / "secrets" / "kafka-kpistream"),
        "KPISTREAM_KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
        "KPISTREAM_REDIS_USERNAME": redis_user,
        "KPISTREAM_REDIS_PASSWORD_FILE": str(tmp / "redis-password"),
        "KPISTREAM_REDIS_SSL_CAFILE": str(TLS / "ca.pem"),
        "KPISTREAM_WEB_USERNAME": "prometheus",
        "KPISTREAM_WEB_PASSWORD_FILE": str(tmp / "web-password"),
        "KPISTREAM_WEB_SSL_CERTFILE": str(TLS / "web.pem"),
        "KPISTREAM_WEB_SSL_KEYFILE": str(TLS / "web.key"),
    }


def https_get(port: int, password: str | None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(TLS / "ca.pem"))
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def prometheus_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return list(json.loads(response.read())["data"]["result"])


async def dead_letters(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=3000, max_records=10_000)
        return [m.value or b"" for records in batch.values() for m in records]
    finally:
        await consumer.stop()


def test_secured_deployment_is_exact_scraped_and_leaks_no_secret(stack, tmp_path) -> None:
    name = f"secure-{uuid.uuid4().hex[:6]}"
    redis_user, redis_password = f"kpistream-{name}", secrets.token_hex(12)
    web_password = secrets.token_hex(12)
    dep = Deployment(name, SASL_SSL, REDIS_TLS,
                     extra=secured(tmp_path, redis_user, redis_password, web_password))
    settings = dep.settings
    admin = redis_admin()
    admin.execute_command("ACL", "SETUSER", *documented_acl_rule(
        redis_user, redis_password, settings.redis_prefix,
        [settings.redis_channel, settings.redis_alert_channel]))
    workdir = Path(tempfile.mkdtemp(prefix="kpistream-secure-prom-"))
    prom = None
    try:
        dep.create_topics()  # `kpistream topics create` over SASL_SSL
        _, web_sasl = dep.start_worker()
        _, web_mtls = dep.start_worker(  # the same group, over the mTLS listener
            KPISTREAM_KAFKA_BOOTSTRAP=MTLS, KPISTREAM_KAFKA_SECURITY_PROTOCOL="SSL",
            KPISTREAM_KAFKA_SSL_CERTFILE=str(TLS / "client.pem"),
            KPISTREAM_KAFKA_SSL_KEYFILE=str(TLS / "client.key"))
        start = int(time.time() * 1000) - HOUR_MS
        generated = subprocess.run(  # `kpistream generate` over SASL_SSL
            [sys.executable, "-m", "kpistream", "generate", "--seed", "11", "--duration", "1h",
             "--orders-per-hour", "4000", "--campaigns", "8", "--start", str(start)],
            env={**os.environ, **dep.env}, capture_output=True, text=True, timeout=120)
        assert generated.returncode == 0, generated.stderr
        records = list(TrafficGenerator(TrafficConfig(
            seed=11, start_ms=start, duration_ms=HOUR_MS, orders_per_hour=4000,
            campaigns=8)).records())
        asyncio.run(produce_raw(stack.bootstrap, [
            (settings.topic_orders, b'{"order_id": "bad", "amount": -1}'),
            (settings.topic_surveys, b"not json")]))
        outcome = reference.classify(normalise(settings, records, int(time.time() * 1000)),
                                     retention_ms=settings.retention_ms)
        rows = wait_for_rows(admin_settings(), settings.redis_prefix, outcome, 120)
        problems = row_mismatches(rows, outcome)
        assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
        for proc in dep.workers:
            assert proc.poll() is None, "a secured worker exited"

        # The client library and `kpistream top` over the same secured connections.
        reader = Settings(**{**dep.settings.model_dump(), **admin_settings().model_dump(
            include={"redis_url", "redis_password", "redis_ssl_cafile"}), "redis_username": ""})
        row = asyncio.run(get_row(reader, "1h", "all", "all"))
        assert row is not None and row.orders == int(rows[("1h", "all", "all")]["orders"])
        updates = asyncio.run(collect_updates(dep.settings))
        assert ("1h", "all", "all") in updates
        top = subprocess.run(
            [sys.executable, "-m", "kpistream", "top", "--once", "--window", "1h"],
            env={**os.environ, **dep.env, "KPISTREAM_REDIS_USERNAME": "default",
                 "KPISTREAM_REDIS_PASSWORD_FILE": str(LOCAL / "secrets" / "redis-admin")},
            capture_output=True, text=True, timeout=60)
        assert top.returncode == 0 and "all" in top.stdout, top.stderr

        # The web port: 401 without the password, metrics with it, over TLS.
        assert https_get(web_sasl, None)[0] == 401
        assert https_get(web_sasl, "wrong")[0] == 401
        status, body_sasl = https_get(web_sasl, web_password)
        assert status == 200 and "kpistream_events_total" in body_sasl
        body_mtls = https_get(web_mtls, web_password)[1]
        for password, healthy in ((web_password, 0), ("wrong", 1)):  # the k8s exec probe
            probe = subprocess.run(
                [sys.executable, "-m", "kpistream", "health"], capture_output=True, text=True,
                env={**os.environ, **dep.env, "KPISTREAM_WEB_PORT": str(web_sasl),
                     "KPISTREAM_WEB_PASSWORD_FILE": "", "KPISTREAM_WEB_PASSWORD": password})
            assert probe.returncode == healthy, probe.stderr

        # A real Prometheus scrapes both workers with basic_auth and tls_config.
        port = free_port()
        (workdir / "password").write_text(web_password)
        (workdir / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{
                "job_name": "kpistream", "scheme": "https",
                "basic_auth": {"username": "prometheus",
                               "password_file": str(workdir / "password")},
                "tls_config": {"ca_file": str(TLS / "ca.pem")},
                "static_configs": [{"targets": [f"127.0.0.1:{web_sasl}",
                                                f"127.0.0.1:{web_mtls}"]}]}]}))
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, up, orders = time.monotonic() + 60, [], []
        while time.monotonic() < deadline:
            try:
                up = prometheus_query(port, 'up{job="kpistream"} == 1')
                orders = prometheus_query(port, 'kpistream_orders{window="1h",dimension="all"}')
            except OSError:
                pass
            if len(up) == 2 and orders:
                break
            time.sleep(1)
        assert len(up) == 2, f"Prometheus did not scrape both workers: {up}"
        assert orders and float(orders[0]["value"][1]) == outcome_orders(rows)

        # No secret anywhere: settings output, logs, DLQ, metrics.
        shown = subprocess.run([sys.executable, "-m", "kpistream", "settings"],
                               env={**os.environ, **dep.env}, capture_output=True, text=True)
        assert shown.returncode == 0
        dlq = asyncio.run(dead_letters(stack.bootstrap, settings.topic_dlq))
        assert b'"topic":"%s"' % settings.topic_surveys.encode() in b"".join(dlq)
        assert any(b'"invalid_schema"' in m and b"bad" in m for m in dlq)
        dep.stop()  # logs complete, with the shutdown
        logs = "".join(path.read_text(errors="replace")
                       for path in LOG_DIR.glob(f"{dep.name}-*.log"))
        assert "input_rejected" in logs  # the logs are the workers' real output
        haystacks = {"settings": shown.stdout + shown.stderr, "logs": logs,
                     "dlq": b"".join(dlq).decode(errors="replace"),
                     "metrics": body_sasl + body_mtls}
        for label, value in {"kafka": secret("kafka-kpistream"), "redis": redis_password,
                             "web": web_password, "redis-admin": secret("redis-admin")}.items():
            for where, text in haystacks.items():
                assert value not in text, f"the {label} secret appears in the {where}"
        assert '"kafka_sasl_password": "***"' in shown.stdout
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
        dep.stop()
        admin.execute_command("ACL", "DELUSER", redis_user)
        shutil.rmtree(workdir, ignore_errors=True)


async def collect_updates(settings: Settings) -> set[tuple[str, str, str]]:
    """Row keys on kpi-updates, read with the worker's own SASL_SSL settings."""
    seen = set()
    async for update in kafka_updates(settings, topic=settings.topic_kpi_updates,
                                      idle_timeout_s=3):
        seen.add((update.window, update.dimension, update.group))
    return seen


def outcome_orders(rows: dict[tuple[str, str, str], dict[str, str]]) -> float:
    """The 1h/all row's orders as Redis holds it (already checked against the reference)."""
    return float(rows[("1h", "all", "all")]["orders"])


def deny_read(topic: str) -> None:
    """A DENY ACL for user kpistream on one topic, through the development listener."""
    libs = LOCAL / "kafka" / "libs"
    done = subprocess.run(
        ["java", "-cp", f"{libs}/*", f"-Dlog4j.configuration=file:{LOCAL}/kafka/log4j.properties",
         "kafka.admin.AclCommand", "--bootstrap-server", "127.0.0.1:9092", "--add",
         "--deny-principal", "User:kpistream", "--operation", "Read", "--topic", topic],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


KAFKA_SECURE = {
    "KPISTREAM_KAFKA_BOOTSTRAP": SASL_SSL,
    "KPISTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KPISTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "KPISTREAM_KAFKA_SASL_USERNAME": "kpistream",
    "KPISTREAM_KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
}
# case -> (environment beyond a working secured one, words of the message naming the cause)
FAILURES: dict[str, tuple[dict[str, str], str]] = {
    "wrong_kafka_password": ({"KPISTREAM_KAFKA_SASL_PASSWORD": "WrongPassw0rd"},
                             "SASL authentication of user 'kpistream' with SCRAM-SHA-256 failed"),
    "unknown_ca": ({"KPISTREAM_KAFKA_SSL_CAFILE": str(TLS / "other-ca.pem")},
                   "certificate verify failed"),
    "expired_client_certificate": (
        {"KPISTREAM_KAFKA_BOOTSTRAP": MTLS, "KPISTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
         "KPISTREAM_KAFKA_SSL_CERTFILE": str(TLS / "client-expired.pem"),
         "KPISTREAM_KAFKA_SSL_KEYFILE": str(TLS / "client-expired.key")},
        "the certificate expired on"),
    "client_certificate_of_an_unknown_ca": (
        {"KPISTREAM_KAFKA_BOOTSTRAP": MTLS, "KPISTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
         "KPISTREAM_KAFKA_SSL_CERTFILE": str(TLS / "client-other.pem"),
         "KPISTREAM_KAFKA_SSL_KEYFILE": str(TLS / "client-other.key")},
        "TLS: sslv3 alert"),
    "plaintext_client_on_a_tls_listener": ({"KPISTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
                                           "the listener speaks TLS"),
    "missing_redis_ca_file": ({"KPISTREAM_REDIS_SSL_CAFILE": "/nonexistent/ca.pem"},
                              "KPISTREAM_REDIS_SSL_CAFILE=/nonexistent/ca.pem is not a readable"),
    "plaintext_redis_url_on_a_tls_port": (
        {"KPISTREAM_REDIS_URL": REDIS_TLS.replace("rediss://", "redis://")},
        "the server speaks TLS: use a rediss:// URL"),
    "wrong_redis_password": ({"KPISTREAM_REDIS_PASSWORD": "WrongPassw0rd"},
                             "authentication of user 'default' failed"),
    "redis_acl_without_the_prefix": ({"KPISTREAM_REDIS_USERNAME": "kpistream-noperm"},
                                     "user 'kpistream-noperm' lacks a permission"),
    "topic_not_authorised": ({}, "edge reader is not authorised: TopicAuthorizationFailedError"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_wrong_credential_or_certificate_exits_within_30s_naming_it(stack, case) -> None:
    extra, words = FAILURES[case]
    name = f"fail-{case[:12]}-{uuid.uuid4().hex[:6]}".replace("_", "-")
    dep = Deployment(name, SASL_SSL, REDIS_TLS, extra={
        **KAFKA_SECURE,
        "KPISTREAM_KAFKA_SASL_PASSWORD": secret("kafka-kpistream"),
        "KPISTREAM_REDIS_PASSWORD": secret("redis-admin"),
        "KPISTREAM_REDIS_SSL_CAFILE": str(TLS / "ca.pem"),
    })
    dep.create_topics()  # with working credentials
    admin = redis_admin()
    if case == "redis_acl_without_the_prefix":
        admin.execute_command("ACL", "SETUSER", "kpistream-noperm", "reset", "on",
                              f">{secret('redis-admin')}", "~someone-else:*", "+@all")
    if case == "topic_not_authorised":
        deny_read(dep.settings.topic_orders)
    env = {**os.environ, **dep.env, **extra, "KPISTREAM_WEB_PORT": str(free_port())}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kpistream", "worker"], env=env,
                          capture_output=True, text=True, timeout=90)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode not in (None, 0), output[-2000:]
    assert elapsed < EXIT_WITHIN_S, f"exited after {elapsed:.1f} s"
    assert words in output, output[-2000:]
    for value in (secret("kafka-kpistream"), secret("redis-admin"), "WrongPassw0rd"):
        assert value not in output, "a secret appears in the error output"
