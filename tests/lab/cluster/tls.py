"""A throw-away CA and serving certificate for the simulated API server (openssl CLI).

HTTPS is not decoration: client-go (kubectl) refuses to send a bearer token over plain
http, so a kubeconfig with ``token:`` only works against an https server. The CA goes into
the kubeconfig as ``certificate-authority-data``, exactly like a real cluster's.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServingCert:
    directory: Path
    ca_pem: bytes

    @property
    def cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def available() -> bool:
    return shutil.which("openssl") is not None


def make_serving_cert(host: str = "127.0.0.1") -> ServingCert:
    d = Path(tempfile.mkdtemp(prefix="simkube-tls-"))

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=sim-kube-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=kube-apiserver")
    (d / "ext.cnf").write_text(f"subjectAltName=IP:{host},DNS:localhost,DNS:kubernetes\n"
                               "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return ServingCert(d, (d / "ca.crt").read_bytes())
