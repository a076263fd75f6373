"""Secrets the simulated API hands out: passwords, Kafka client keys, the project CA.

Passwords and keys come from secrets (never from the seeded random source), so two
simulators with the same seed still never hand out the same credentials.
"""

from __future__ import annotations

import base64
import secrets
import string
import textwrap
from typing import Final

__all__ = ["CA_CERTIFICATE_B64", "generate_password", "kafka_access_cert", "kafka_access_key"]

_PASSWORD_ALPHABET: Final = string.ascii_letters + string.digits

# A real self-signed CA certificate (its private key was thrown away when it was made), so a
# client can load it with ssl.create_default_context(cadata=...). DigitalOcean has one CA per
# project; the simulator has one project.
_CA_CERTIFICATE_PEM: Final = """\
-----BEGIN CERTIFICATE-----
MIIDSTCCAjGgAwIBAgIUHAZHfrFVH/8u1sNYqalnXcyCjvgwDQYJKoZIhvcNAQEL
BQAwKzEpMCcGA1UEAwwgUHJvdmlzaW9uZXIgU2ltdWxhdG9yIFByb2plY3QgQ0Ew
IBcNMjYxMTI2MTgyNjU0WhgPMjEyNjExMDIxODI2NTRaMCsxKTAnBgNVBAMMIFBy
b3Zpc2lvbmVyIFNpbXVsYXRvciBQcm9qZWN0IENBMIIBIjANBgkqhkiG9w0BAQEF
AAOCAQ8AMIIBCgKCAQEAoX/ycgskBNKr3SYR/AW+t8Srng23u9IrYVtW7xe44FVG
QTj/Xs1835WCYnxj9I0a9N++rbvoWplcC/9iKHRB7/6tlQSi79CX3sAujgvqoASS
i7F+BqYaAcxV15afWVcjawuxwvdi7Nws9OWx8OCmVaJ6SR65ZuL6oN56OQ5041Ex
CyJbQoG7+qcey2+mrN7KPuzAFn9wczBgwvdpx4mPRUsbqZjybd4D9fdzZpehzwZX
2ThpzFlsShwSP19YcrJ6ValTVTwZp8NBnO+dGibJXQ7sMshx1RUWpa5mqpSvKH3y
OeEJO8Wn422z40hKwbCTjr3BLooaJCUSlhbROR15UwIDAQABo2MwYTAdBgNVHQ4E
FgQUIO2q+A49FPhmUh2BSI8+pHH7OeswHwYDVR0jBBgwFoAUIO2q+A49FPhmUh2B
SI8+pHH7OeswDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwDQYJKoZI
hvcNAQELBQADggEBAC38kcAAJArlQQOZ64T8vs62tuodHp2jbn+N4DB8CbAY8/RY
mq0Qiq6CLSygQ1qzY8pUThms3NOQut9Ws81Mh4X89Wy6HAGRoy3jjVl40puxZU7g
vRc5QQIlZTU1nud3SHtWP5MPmCtkKQyVZJ967CMZZdfxA+9D1KwsL5j8Ek+GsRuL
erPPk6UfBjk+fINSZnQWOD2KRDqZUkHvcuhu21x9pIBtWhlzPx86FfYghXHr7I+f
iLlVtDLB5rR5enzTYi2AU4/29fHAqhnNItrs1c/szeH4B3ArpS8vgL9xd+UUn5xn
4PbitB1QC01m2IbjBSvgvgeFbJsSJ14O1kt4mbE=
-----END CERTIFICATE-----
"""

CA_CERTIFICATE_B64: Final[str] = base64.b64encode(_CA_CERTIFICATE_PEM.encode()).decode()
"""The CA certificate as ``GET /v2/databases/{id}/ca`` sends it: base64 of the PEM."""


def generate_password() -> str:
    """A password shaped like DigitalOcean's (``AVNS_`` and 19 random characters)."""
    return "AVNS_" + "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(19))


def _pem(label: str, der_like: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der_like).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


def kafka_access_cert() -> str:
    """A Kafka client certificate: PEM framing around random bytes (not parseable as X.509)."""
    return _pem("CERTIFICATE", secrets.token_bytes(900))


def kafka_access_key() -> str:
    """A Kafka client private key: PEM framing around random bytes, unique per user."""
    return _pem("PRIVATE KEY", secrets.token_bytes(1200))
