"""The mutual-TLS sign-in scenario: AWS IoT devices signing in with X.509 client certificates,
cold and in a reconnect storm, ThingHub beside mosquitto (``require_certificate true``, the
same CA) in the same run.

    .venv/bin/python -m bench --scenario mtls [--mtls-devices 5000] [--window 256]

One run:

1. **Certificates.** A device maker's CA and ``devices`` device certificates (ECDSA P-256,
   common name = client id) are made here with ``cryptography``, and one client TLS context
   per device holding its certificate, all before any clock starts. The generator does not
   verify the servers' certificates (both brokers would pay for it alike in the clients'
   CPU, which is the generator's; the servers' work is what is measured).
2. **ThingHub.** A hub is started with its TLS listener on a free port; the maker's CA is
   registered through the AWS IoT API (GetRegistrationCode, RegisterCACertificate with its
   verification certificate), then every device certificate (RegisterCertificate, ACTIVE)
   with one policy attached (AttachPolicy: ``iot:Connect`` on ``client/${iot:ClientId}``,
   so every sign-in resolves a policy variable). Registration is timed and reported, not
   judged. Then the waves (bench/connstorm.py, ``window`` connects in flight, each one a TCP
   connect, a TLS handshake with the client certificate and an MQTT 3.1.1 CONNECT):

   * **cold**: every device connects to the hub that has just registered them (its sign-in
     cache starts empty: the registrations moved the identity generation);
   * **storm**: every connection is dropped at once (RST) and every device connects again.

   The figure is CONNACK 0 per second, the first connect to the last CONNACK.
3. **mosquitto**: the same waves against mosquitto with a TLS listener requiring a client
   certificate from the maker's CA (``require_certificate true``,
   ``use_identity_as_username true``), its server certificate from the same CA.

Any connect that fails fails the scenario; the ratio ThingHub / mosquitto per wave is judged
against its target (bench/targets.py: MISSED is reported, not fatal). Like the rest of the
harness it never imports ThingHub: boto3 and MQTT over TLS to whatever listens.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import brokers
from bench.connstorm import Fleet, WaveResult, connect_packet
from bench.http_publish import KeyedThingHub, run_loop

DEFAULT_DEVICES = 5_000
QUICK_DEVICES = 200
WINDOW = 256
REGISTER_THREADS = 8
FD_MARGIN = 1_000
POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}",
            }
        ],
    }
)
BROKERS = ("thinghub", "mosquitto")
WAVES = ("cold", "storm")


def wave_deadline(count: int) -> float:
    return 60.0 + count / 100


# --------------------------------------------------------------------------- certificates


@dataclass
class Maker:
    """A device maker's CA, its server certificate (for mosquitto) and its devices."""

    directory: Path
    ca_pem: str
    ca_file: Path
    server_cert: Path
    server_key: Path
    devices: list[tuple[str, str, Path, Path]]  # (client id, certificate PEM, cert, key)


def make_certificates(count: int, directory: Path) -> tuple[Maker, Any]:
    """The maker's CA and ``count`` device certificates; (maker, the CA's signing tools)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"Bench Maker CA {secrets.token_hex(3)}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common_name: str, *, server: bool = False
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(brokers.HOST)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    def write(name: str, cert: x509.Certificate, key: Any) -> tuple[str, Path, Path]:
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        cert_file.write_text(cert_pem)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_pem, cert_file, key_file

    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    ca_file = directory / "maker-ca.pem"
    ca_file.write_text(ca_pem)
    _pem, server_cert, server_key = write("server", *issue(brokers.HOST, server=True))
    token = secrets.token_hex(3)
    devices = []
    for i in range(count):
        client_id = f"benchmtls{token}{i}"
        pem, cert_file, key_file = write(client_id, *issue(client_id))
        devices.append((client_id, pem, cert_file, key_file))

    def verification(code: str) -> str:
        return write("verification", *issue(code))[0]

    return (
        Maker(directory, ca_pem, ca_file, server_cert, server_key, devices),
        verification,
    )


def client_contexts(maker: Maker) -> list[ssl.SSLContext]:
    """One TLS client context per device, with its certificate; the server is not verified
    (module notes)."""
    contexts = []
    for _client_id, _pem, cert_file, key_file in maker.devices:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(str(cert_file), str(key_file))
        contexts.append(context)
    return contexts


# --------------------------------------------------------------------------- the brokers


class MtlsThingHub(KeyedThingHub):
    """A ThingHub whose TLS listener is on a known free port, sized for the crowd."""

    def __init__(self, cpu: int | None, devices: int, binary: str | None) -> None:
        key_id = "AKIABENCH" + secrets.token_hex(6).upper()
        room = str(devices + FD_MARGIN)
        self.tls_port = brokers.free_port()
        env = {
            "THINGHUB_MQTT_TLS_PORT": str(self.tls_port),
            "THINGHUB_MQTT_MAX_CONNECTIONS": room,
            "THINGHUB_MQTT_MAX_PENDING_CONNECTS": room,
            "THINGHUB_MQTT_MAX_CONNECTIONS_PER_ADDRESS": "0",
            # Registration is thousands of control-plane calls from one key.
            "THINGHUB_API_AWS_RATE_LIMITS": "RegisterCertificate=100000,AttachPolicy=100000",
        }
        super().__init__(cpu, key_id, secrets.token_urlsafe(30), env, binary)


class MtlsMosquitto(brokers.Mosquitto):
    """mosquitto with one TLS listener requiring a client certificate of the maker's CA."""

    def __init__(self, cpu: int | None, maker: Maker, binary: str | None) -> None:
        super().__init__(cpu, binary)
        self.maker = maker

    def command(self, workdir: Path) -> list[str]:
        conf = workdir / "mosquitto.conf"
        maker = self.maker
        # Started as root, mosquitto reads its certificates as the user it drops to
        # ("mosquitto"): the bench's throw-away files are made readable to it.
        for path in (maker.directory, workdir):
            path.chmod(0o755)
        for path in (maker.ca_file, maker.server_cert, maker.server_key):
            path.chmod(0o644)
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {brokers.HOST}",
                    f"cafile {maker.ca_file}",
                    f"certfile {maker.server_cert}",
                    f"keyfile {maker.server_key}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "allow_anonymous false",
                    "max_connections -1",
                    "persistence false",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "connection_messages false",
                    "",
                ]
            )
        )
        return [self.binary, "-c", str(conf)]


def _wait_listening(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((brokers.HOST, port), 0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --------------------------------------------------------------------------- registration


def register(hub: MtlsThingHub, maker: Maker, verification: Any) -> tuple[float, int]:
    """The maker's CA, every device certificate and its policy, through the AWS IoT API
    (boto3, ``REGISTER_THREADS`` at once); (seconds, calls)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "total_max_attempts": 3}, max_pool_connections=4)
    local = threading.local()

    def client() -> Any:
        iot = getattr(local, "iot", None)
        if iot is None:
            iot = local.iot = boto3.client(
                "iot",
                endpoint_url=f"http://{brokers.HOST}:{hub.http_port}",
                region_name="us-east-1",
                aws_access_key_id=hub.key_id,
                aws_secret_access_key=hub.secret,
                config=config,
            )
        return iot

    started = time.perf_counter()
    iot = client()
    code = iot.get_registration_code()["registrationCode"]
    iot.register_ca_certificate(
        caCertificate=maker.ca_pem, verificationCertificate=verification(code), setAsActive=True
    )
    iot.create_policy(policyName="bench-mtls", policyDocument=POLICY)
    calls = 3

    def one(device: tuple[str, str, Path, Path]) -> None:
        api = client()
        created = api.register_certificate(
            certificatePem=device[1], caCertificatePem=maker.ca_pem, status="ACTIVE"
        )
        api.attach_policy(policyName="bench-mtls", target=created["certificateArn"])

    with concurrent.futures.ThreadPoolExecutor(REGISTER_THREADS) as pool:
        for _ in pool.map(one, maker.devices):
            calls += 2
    return time.perf_counter() - started, calls


# --------------------------------------------------------------------------- the waves


async def _waves(
    port: int,
    packets: Sequence[bytes],
    contexts: Sequence[ssl.SSLContext],
    window: int,
    probe: brokers.TreeProbe | None,
) -> tuple[WaveResult, WaveResult]:
    fleet = Fleet(brokers.HOST, port, packets, window=window, contexts=contexts)
    deadline = wave_deadline(len(packets))
    try:
        cold = await fleet.connect_all("cold", deadline, probe)
        await fleet.drop_all()
        storm = await fleet.connect_all("storm", deadline, probe)
    finally:
        await fleet.drop_all(10.0)
    return cold, storm


def _wave_figures(prefix: str, w: WaveResult) -> dict[str, float | None]:
    return {
        f"{prefix}.rate": round(w.rate, 1),
        f"{prefix}.elapsed_s": round(w.elapsed_s, 3),
        f"{prefix}.connected": w.connected,
        f"{prefix}.errors": w.errors,
        f"{prefix}.hub_cpu": None if w.hub_cpu is None else round(w.hub_cpu, 1),
        f"{prefix}.gen_cpu": round(w.gen_cpu, 1),
    }


def device_cap(wanted: int) -> tuple[int, str | None]:
    nofile = brokers.raise_nofile()
    cap = nofile - FD_MARGIN
    if wanted <= cap:
        return wanted, None
    return max(1, cap), (
        f"{wanted:,} devices asked for, {cap:,} connect: RLIMIT_NOFILE (hard) is {nofile:,}"
    )


def run(
    devices: int = DEFAULT_DEVICES,
    *,
    window: int = WINDOW,
    cpus: tuple[int | None, int | None] = (None, None),
    binary: str | None = None,
    mosquitto: str | None = None,
    with_mosquitto: bool = True,
) -> dict[str, Any]:
    """One run; the dict bench/runner.py turns into a RunResult: ``figures``, ``failures``,
    ``notes``."""
    hub_cpu, gen_cpu = cpus
    if gen_cpu is not None:
        os.sched_setaffinity(0, {gen_cpu})
    count, note = device_cap(devices)
    notes = [note] if note else []
    failures: list[str] = []
    figures: dict[str, float | None] = {"devices": count}
    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as tmp:
        t0 = time.perf_counter()
        maker, verification = make_certificates(count, Path(tmp))
        contexts = client_contexts(maker)
        figures["certificates_s"] = round(time.perf_counter() - t0, 2)
        packets = [connect_packet(4, client_id) for client_id, *_ in maker.devices]
        waves: dict[str, tuple[WaveResult, WaveResult]] = {}
        hub = MtlsThingHub(hub_cpu, count, binary)
        hub.start()
        try:
            _wait_listening(hub.tls_port)
            register_s, calls = register(hub, maker, verification)
            figures["register_s"] = round(register_s, 2)
            figures["register_calls"] = calls
            waves["thinghub"] = run_loop(_waves(hub.tls_port, packets, contexts, window, hub.probe))
        finally:
            hub.stop()
        other = MtlsMosquitto(hub_cpu, maker, mosquitto)
        if not with_mosquitto:
            notes.append("mosquitto not asked for (--broker): ThingHub's figures only")
        elif other.installed() is None:
            other.start()
            try:
                waves["mosquitto"] = run_loop(
                    _waves(other.port, packets, contexts, window, other.probe)
                )
            finally:
                other.stop()
        else:
            notes.append("mosquitto is not installed: ThingHub's figures only")
    for broker, (cold, storm) in waves.items():
        for wave in (cold, storm):
            figures.update(_wave_figures(f"{broker}.{wave.name}", wave))
            if wave.errors:
                failures.append(
                    f"{broker} {wave.name}: {wave.errors} of {wave.attempted} connects failed "
                    f"(first: {'; '.join(wave.first_errors[:2])})"
                )
    thinghub = waves.get("thinghub")
    mosq = waves.get("mosquitto")
    if thinghub is not None:
        figures["rate"] = round(min(w.rate for w in thinghub), 1)
    if mosq is not None:
        figures["mosquitto.rate"] = round(min(w.rate for w in mosq), 1)
    if thinghub is not None and mosq is not None:
        ratios = []
        for mine, theirs in zip(thinghub, mosq, strict=True):
            if theirs.rate > 0:
                figures[f"ratio.{mine.name}"] = ratio = round(mine.rate / theirs.rate, 3)
                ratios.append(ratio)
        figures["ratio"] = min(ratios) if ratios else None
    figures["failed_connects"] = float(sum(w.errors for pair in waves.values() for w in pair))
    return {"figures": figures, "failures": failures, "notes": notes}


def setup_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (OSError, ConnectionError, TimeoutError, BotoCoreError, ClientError, KeyError)
