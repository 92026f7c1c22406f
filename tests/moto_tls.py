"""moto's S3 and EMR APIs behind TLS, for SSE-KMS.

AWS's Java SDK, which Hadoop's S3A connector uses, sends a request with a KMS key only over
HTTPS ("HTTPS must be used when sending customer encryption keys"), as real S3 requires. This
server shares moto's state with the plain-HTTP one of the session, with a self-signed
certificate for 127.0.0.1 that Python's SDKs trust through AWS_CA_BUNDLE and every JVM through
JAVA_TOOL_OPTIONS (a copy of the JDK's trust store with the certificate added: Maven Central's
stays trusted for spark.jars.packages).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import s3fs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

TRUST_STORE_PASSWORD = "changeit"


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "moto.pem", folder / "moto.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _java_trust_store(certificate: Path, folder: Path) -> Path:
    java_home = Path(shutil.which("java")).resolve().parents[1]
    store = folder / "cacerts"
    shutil.copyfile(java_home / "lib" / "security" / "cacerts", store)
    subprocess.run(
        [
            str(java_home / "bin" / "keytool"),
            "-importcert",
            "-noprompt",
            "-alias",
            "moto",
            "-file",
            str(certificate),
            "-keystore",
            str(store),
            "-storepass",
            TRUST_STORE_PASSWORD,
        ],
        check=True,
        capture_output=True,
    )
    return store


@contextmanager
def https_moto_server(folder: Path) -> Iterator[dict[str, str]]:
    """Starts the server; yields the environment variables that point every SDK at it."""
    certificate, key = _self_signed_certificate(folder)
    trust_store = _java_trust_store(certificate, folder)
    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=True,
        request_handler=MotoRequestHandler,
        ssl_context=(str(certificate), str(key)),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # s3fs keeps its filesystems by arguments, not by endpoint: none may outlive the switch.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"https://127.0.0.1:{server.server_port}",
            "AWS_CA_BUNDLE": str(certificate),
            "JAVA_TOOL_OPTIONS": (
                f"-Djavax.net.ssl.trustStore={trust_store} "
                f"-Djavax.net.ssl.trustStorePassword={TRUST_STORE_PASSWORD}"
            ),
        }
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.shutdown()
        thread.join()
