"""MQTT over TLS and per-device ACLs, against a real Mosquitto configured by `edgefleet certs` and `edgefleet acl`.

One private broker serves the module: a TLS listener that requires a certificate from the test
CA (its CN is the user name) and a TLS listener for user names and passwords, both under the
ACL. Mosquitto 2.0 with MQTT 3.1.1 (what edgefleet speaks) grants a SUBACK for a topic the ACL
forbids but delivers nothing on it, and acknowledges a forbidden PUBLISH but drops it; the tests
assert exactly that, using an operator observer and a later permitted message as the control.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from conftest import AgentProcess, free_port, make_package, wait_for_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent import topics
from edgefleet.agent.config import load_config
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy import acl, certs
from edgefleet.deploy.cli import main
from edgefleet.deploy.link import BrokerLink, PushError

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs Mosquitto")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class SecureBroker:
    pki: Path
    foreign: Path  # a second CA and its certificates, which the broker does not trust
    tls_port: int
    password_port: int
    passwords: Path
    dev_a: str
    dev_b: str
    group: str

    def url(self, name: str | None, *, pki: Path | None = None, host: str = "127.0.0.1") -> BrokerURL:
        """The certificate listener, as client ``name`` (no client certificate for None)."""
        pki = pki or self.pki
        url = BrokerURL.parse(f"mqtts://{host}:{self.tls_port}").with_tls(ca_file=self.pki / "ca.crt")
        if name is None:
            return url
        return url.with_tls(cert_file=pki / "clients" / f"{name}.crt", key_file=pki / "clients" / f"{name}.key")

    def cert_args(self, name: str) -> list[str]:
        u = self.url(name)
        return ["--broker", str(u), "--tls-ca", str(u.ca_file), "--tls-cert", str(u.cert_file),
                "--tls-key", str(u.key_file)]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    work = tmp_path_factory.mktemp("secure")
    pki, foreign = work / "pki", work / "foreign"
    tag = uuid.uuid4().hex[:6]
    dev_a, dev_b, group = f"sec-a-{tag}", f"sec-b-{tag}", f"grp-{tag}"
    run("certs", "init", "--dir", str(pki))
    # Only the IP address: connecting by the name "localhost" is then a host name mismatch.
    run("certs", "server", "--dir", str(pki), "--host", "127.0.0.1")
    run("certs", "device", dev_a, dev_b, "--dir", str(pki))
    run("certs", "operator", "--dir", str(pki))
    run("certs", "init", "--dir", str(foreign), "--name", "someone else's CA")
    run("certs", "device", dev_a, "--dir", str(foreign))
    tls_port, password_port = free_port(), free_port()
    conf = work / "mosquitto.conf"
    # The keys are root's and 0600; `--run-as root` keeps Mosquitto able to read them in this test.
    run("acl", "-o", str(work / "fleet.acl"), "--device", f"{dev_a}:{group}", "--device", dev_b,
        "--passwords", str(work / "passwords"), "--mosquitto-conf", str(conf), "--certs", str(pki),
        "--port", str(tls_port), "--password-port", str(password_port), "--bind", "127.0.0.1", "--run-as", "root")
    with open(work / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(tls_port)
            wait_for_port(password_port)
            yield SecureBroker(pki, foreign, tls_port, password_port, work / "passwords", dev_a, dev_b, group)
        finally:
            proc.terminate()
            proc.wait(10)


class Client:
    """A connected paho client that records SUBACKs and messages, for probing the ACL."""

    def __init__(self, url: BrokerURL) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[list[str]] = []
        self._cond = threading.Condition()
        self._client = make_client(url)
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        link_ok = threading.Event()
        self._client.on_connect = lambda c, u, f, reason, p: reason.is_failure or link_ok.set()
        self._client.connect(url.host, url.port)
        self._client.loop_start()
        assert link_ok.wait(10), f"no CONNACK from {url}"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list, props: object) -> None:
        with self._cond:
            self.subacks.append([str(r) for r in reasons])
            self._cond.notify_all()

    def subscribe(self, topic: str) -> list[str]:
        """Subscribe at QoS 1 and return the broker's reason codes."""
        with self._cond:
            before = len(self.subacks)
            self._client.subscribe(topic, qos=1)
            assert self._cond.wait_for(lambda: len(self.subacks) > before, 10)
            return self.subacks[before]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def wait_for(self, topic: str, timeout: float = 10) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: any(t == topic for t, _ in self.messages), timeout), self.messages

    def topics(self) -> set[str]:
        with self._cond:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --- edgefleet certs ---------------------------------------------------------------------------


def test_certs_names_keys_and_refuses_to_overwrite(secure: SecureBroker) -> None:
    cert = x509.load_pem_x509_certificate((secure.pki / "clients" / f"{secure.dev_a}.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == secure.dev_a
    server = x509.load_pem_x509_certificate((secure.pki / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in [secure.pki / "ca.key", secure.pki / "server.key", *secure.pki.glob("clients/*.key")]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    before = (secure.pki / "ca.crt").read_bytes()
    result = CliRunner().invoke(main, ["certs", "init", "--dir", str(secure.pki)])
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output
    assert (secure.pki / "ca.crt").read_bytes() == before
    result = CliRunner().invoke(main, ["certs", "device", "bad/name", "--dir", str(secure.pki)])
    assert result.exit_code == 1 and "invalid client name 'bad/name'" in result.output


def test_certs_json_and_missing_ca(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["certs", "server", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "edgefleet certs init" in result.output
    run("certs", "init", "--dir", str(tmp_path))
    issued = json.loads(run("certs", "device", "pi-1", "--dir", str(tmp_path), "--json"))
    assert [(c["kind"], c["name"], Path(c["cert"]).name) for c in issued] == [("client", "pi-1", "pi-1.crt")]


# --- edgefleet acl -----------------------------------------------------------------------------


def test_acl_members_from_yaml_csv_and_flags(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("pi-1: [greenhouse, kitchen]\npi-2: greenhouse\n")
    (tmp_path / "m.csv").write_text("device,group\npi-2,garage\npi-3,garage\n")
    members = acl.merge_members(acl.load_members(tmp_path / "m.yaml"), acl.load_members(tmp_path / "m.csv"),
                                dict([acl.parse_device_spec("pi-1:attic")]))
    assert members == {"pi-1": ["greenhouse", "kitchen", "attic"], "pi-2": ["greenhouse", "garage"],
                       "pi-3": ["garage"]}
    text = acl.render_acl(members)
    assert "pattern write edgefleet/v1/devices/%u/state" in text
    assert "user pi-3\ntopic read edgefleet/v1/groups/garage/+/deploy" in text
    assert "user operator\ntopic readwrite edgefleet/v1/#" in text
    (tmp_path / "bad.csv").write_text("pi-1,green/house\n")
    with pytest.raises(acl.AclError, match=r"bad.csv, line 1: invalid group 'green/house'"):
        acl.load_members(tmp_path / "bad.csv")
    with pytest.raises(acl.AclError, match="both an operator and a device"):
        acl.render_acl({"operator": []})


def test_acl_cli_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "fleet.acl"
    run("acl", "-o", str(out), "--device", "pi-1:greenhouse")
    result = CliRunner().invoke(main, ["acl", "-o", str(out)])
    assert result.exit_code == 1 and "already exists; --force replaces it" in result.output
    result = CliRunner().invoke(main, ["acl", "-o", str(out), "--device", "pi+1"])
    assert result.exit_code == 2 and "invalid device id 'pi+1'" in result.output
    result = CliRunner().invoke(main, ["acl", "-o", str(tmp_path / "new.acl"), "--mosquitto-conf",
                                       str(tmp_path / "m.conf"), "--certs", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "ca.crt is missing" in result.output and "edgefleet certs init" in result.output


# --- the broker enforces it ---------------------------------------------------------------------


def test_device_reads_only_its_own_and_its_groups_deployments(secure: SecureBroker) -> None:
    operator, device = Client(secure.url("operator")), Client(secure.url(secure.dev_a))
    try:
        other_group = f"other-{uuid.uuid4().hex[:6]}"
        forbidden = [topics.device_deploy(secure.dev_b), topics.group_deploy(other_group, "raspberry-pi-4")]
        allowed = [topics.device_deploy(secure.dev_a), topics.group_deploy(secure.group, "raspberry-pi-4"),
                   topics.benchmark_requests(secure.dev_a), topics.package_chunk("0" * 64, 0),
                   topics.key_revocation("k1")]
        for topic in [*forbidden, *allowed]:
            # Mosquitto 2.0 under MQTT 3.1.1 grants the subscription whatever the ACL says ...
            assert device.subscribe(topic) == ["Granted QoS 1"]
        for topic in [*forbidden, *allowed]:
            operator.publish(topic, b"{}")
        # ... and filters on delivery: the permitted messages, published last, arrive; the others never do.
        for topic in allowed:
            device.wait_for(topic)
        assert device.topics() == set(allowed)
    finally:
        operator.close()
        device.close()


def test_device_cannot_write_another_devices_topics_or_deploy(secure: SecureBroker) -> None:
    observer, device = Client(secure.url("operator")), Client(secure.url(secure.dev_a))
    try:
        observer.subscribe(f"{topics.ROOT}/#")
        forged = [topics.state(secure.dev_b), topics.telemetry(secure.dev_b), topics.events(secure.dev_b),
                  topics.device_deploy(secure.dev_b), topics.device_deploy(secure.dev_a),
                  topics.group_deploy(secure.group, "raspberry-pi-4"), topics.package_chunk("0" * 64, 0),
                  topics.key_revocation("k1")]
        for topic in forged:
            device.publish(topic, b"forged")  # acknowledged by the broker, then dropped
        own = topics.telemetry(secure.dev_a)
        device.publish(own, b"{}")
        observer.wait_for(own)
        assert observer.topics() == {own}
    finally:
        observer.close()
        device.close()


def test_agent_over_tls_installs_a_pushed_package(
    secure: SecureBroker, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    key, pub = signing_key
    package = make_package(tmp_path / "tiny.efpkg", key)
    url = secure.url(secure.dev_a)
    agent = AgentProcess(str(url), secure.dev_a, tmp_path / "agent", pub,
                         extra=("--tls-ca", str(url.ca_file), "--tls-cert", str(url.cert_file),
                                "--tls-key", str(url.key_file), "--group", secure.group)).start()
    try:
        result = CliRunner().invoke(main, ["push", str(package), "--device", secure.dev_a, "--wait",
                                           "--timeout", "60", *secure.cert_args("operator")])
        assert result.exit_code == 0, result.output + agent.log()
        assert f"{secure.dev_a}: installed" in result.output
    finally:
        agent.stop()


def test_compile_measures_on_the_fleet_over_tls(
    secure: SecureBroker, tmp_path: Path, signing_key: tuple[Path, Path], digits_mlp  # type: ignore[no-untyped-def]
) -> None:
    """``compile --measure-on-fleet`` takes the fleet's --broker and TLS options and benchmarks on an agent over TLS."""
    from edgefleet.agent.messages import DeviceState
    from edgefleet.compiler.cli import compile_command
    from edgefleet.deploy.store import TelemetryStore

    profile = "generic-linux-x86_64"
    url = secure.url(secure.dev_a)
    agent = AgentProcess(str(url), secure.dev_a, tmp_path / "agent", signing_key[1], profile=profile,
                         extra=("--tls-ca", str(url.ca_file), "--tls-cert", str(url.cert_file),
                                "--tls-key", str(url.key_file), "--group", secure.group)).start()
    with TelemetryStore(tmp_path / "fleet.db") as store:
        store.record_state(DeviceState(device_id=secure.dev_a, status="online", profile=profile))
    try:
        result = CliRunner().invoke(compile_command, [
            str(digits_mlp.onnx_path), "--profile", profile, "--calibration", str(digits_mlp.calibration_path),
            "--objective", "latency", "--key", str(signing_key[0]), "-o", str(tmp_path / "out"), "--json",
            "--fleet-db", str(tmp_path / "fleet.db"), "--measure-on-fleet", *secure.cert_args("operator")])
        assert result.exit_code == 0, result.output + agent.log()
    finally:
        agent.stop()
    (package,) = json.loads(result.stdout)["packages"]
    assert package["measured_latency"]["where"] == "on the fleet" and package["measured_latency"]["by_scheme"]
    assert any(r["measured_latency_ms"] for r in package["candidates"])


@pytest.mark.parametrize("mistake, message", [
    ("wrong CA", "signed by a CA this client does not trust; pass that CA with --tls-ca"),
    ("certificate from another CA", "it most likely refused this client's certificate"),
])
def test_agent_with_wrong_tls_files_says_why_and_keeps_retrying(
    secure: SecureBroker, tmp_path: Path, signing_key: tuple[Path, Path], mistake: str, message: str
) -> None:
    url = secure.url(secure.dev_a, pki=secure.foreign if mistake == "certificate from another CA" else None)
    ca = secure.foreign / "ca.crt" if mistake == "wrong CA" else url.ca_file
    agent = AgentProcess(str(url), secure.dev_a, tmp_path / "agent", signing_key[1],
                         extra=("--tls-ca", str(ca), "--tls-cert", str(url.cert_file),
                                "--tls-key", str(url.key_file))).start()
    try:
        deadline = time.monotonic() + 30
        while agent.log().count(message) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = agent.log()
        assert log.count(message) >= 2, log  # said why, then retried and said it again
        assert agent.alive() and "Traceback" not in log
    finally:
        agent.stop()


# --- refusals, with errors that say what to do ----------------------------------------------------


def test_client_certificate_from_another_ca_is_refused(secure: SecureBroker) -> None:
    for url in (secure.url(secure.dev_a, pki=secure.foreign), secure.url(None)):
        with pytest.raises(PushError, match="refused this client's certificate"):
            BrokerLink(url, timeout=10).open()


def test_wrong_server_ca_and_host_name_mismatch_are_explained(secure: SecureBroker) -> None:
    wrong_ca = secure.url("operator").with_tls(ca_file=secure.foreign / "ca.crt")
    with pytest.raises(PushError, match="cannot verify the broker .* pass that CA with --tls-ca"):
        BrokerLink(wrong_ca, timeout=10).open()
    with pytest.raises(PushError, match="does not name this host.*--host NAME"):
        BrokerLink(secure.url("operator", host="localhost"), timeout=10).open()


def test_tls_files_on_a_plain_url_are_a_usage_error(secure: SecureBroker, tmp_path: Path) -> None:
    package = tmp_path / "p.efpkg"
    package.write_bytes(b"")
    result = CliRunner().invoke(main, ["push", str(package), "--device", "d", "--broker", "mqtt://127.0.0.1:1",
                                       "--tls-ca", str(secure.pki / "ca.crt")])
    assert result.exit_code == 2 and "write it as mqtts://127.0.0.1:PORT" in result.output


def test_user_name_and_password_from_a_file(secure: SecureBroker, tmp_path: Path) -> None:
    base = f"mqtts://{{}}@127.0.0.1:{secure.password_port}"
    ca = secure.pki / "ca.crt"
    clients = secure.passwords / "clients"
    assert stat.S_IMODE((clients / "operator").stat().st_mode) == 0o600
    device = Client(BrokerURL.parse(base.format(secure.dev_b)).with_tls(ca_file=ca,
                                                                        password_file=clients / secure.dev_b))
    try:
        own, other = topics.benchmark_requests(secure.dev_b), topics.benchmark_requests(secure.dev_a)
        device.subscribe(other)
        device.subscribe(own)
        operator = BrokerURL.parse(base.format("operator")).with_tls(ca_file=ca, password_file=clients / "operator")
        with BrokerLink(operator, timeout=10) as link:
            link.publish([(other, b"{}"), (own, b"{}")], total=2, retain=False)
        device.wait_for(own)  # the same ACL holds for a password-authenticated device
        assert device.topics() == {own}
    finally:
        device.close()
    (tmp_path / "wrong").write_text("not-the-password\n")
    with pytest.raises(PushError, match="refused the connection: Not authorized"):
        BrokerLink(BrokerURL.parse(base.format(secure.dev_b)).with_tls(ca_file=ca, password_file=tmp_path / "wrong"),
                   timeout=10).open()
    # Rerunning keeps the passwords devices already have.
    copy = shutil.copytree(secure.passwords, tmp_path / "passwords")
    acl.write_acl(tmp_path / "again.acl", {secure.dev_b: []}, passwords_dir=copy, force=True)
    assert (copy / "clients" / secure.dev_b).read_text() == (clients / secure.dev_b).read_text()
    assert (copy / "mosquitto.passwd").read_text().startswith("operator:$7$")  # hashed, not plain


@pytest.mark.skipif(Path("/etc/edgefleet/agent.yaml").exists(), reason="the installer keeps an existing config")
def test_the_pi_installer_copies_the_tls_files_into_the_config(secure: SecureBroker, tmp_path: Path) -> None:
    client = secure.pki / "clients"
    install = Path(__file__).resolve().parent.parent / "deploy" / "pi" / "install.sh"
    out = subprocess.run(
        ["bash", str(install), "--dry-run", "--trust", str(secure.pki / "ca.crt"), "--broker", "mqtts://fleet:8883",
         "--tls-ca", str(secure.pki / "ca.crt"), "--tls-cert", str(client / f"{secure.dev_a}.crt"),
         "--tls-key", str(client / f"{secure.dev_a}.key")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert f"install -m 0640 -o root -g edgefleet {client / secure.dev_a}.key /etc/edgefleet/tls/client.key" in out
    (tmp_path / "agent.yaml").write_text(out.split("(mode 0640):\n", 1)[1].split("\n+ ", 1)[0])
    config = load_config(tmp_path / "agent.yaml")
    assert (config.tls_ca, config.tls_cert, config.tls_key) == (
        Path("/etc/edgefleet/tls/ca.crt"), Path("/etc/edgefleet/tls/client.crt"), Path("/etc/edgefleet/tls/client.key"))


def test_agent_config_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text("tls_ca: tls/ca.crt\npassword_file: /run/secret\n")
    config = load_config(tmp_path / "agent.yaml")
    assert config.tls_ca == tmp_path / "tls" / "ca.crt" and config.password_file == Path("/run/secret")


def test_an_expired_broker_certificate_is_explained(secure: SecureBroker, tmp_path: Path) -> None:
    """A TLS server (no MQTT needed: verification fails in the handshake) with a certificate that expired yesterday."""
    ca_cert, ca_key = certs.load_ca(secure.pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "s.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "s.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def handshake_once() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True):
                pass

        threading.Thread(target=handshake_once, daemon=True).start()
        url = BrokerURL.parse(f"mqtts://127.0.0.1:{port}").with_tls(ca_file=secure.pki / "ca.crt")
        with pytest.raises(PushError, match="certificate has expired .*edgefleet certs server"):
            BrokerLink(url, timeout=10).open()
