"""A real OpenLDAP slapd for the tests, run from a temporary configuration.

`Slapd(root)` writes a slapd.conf (schemas core, cosine, nis, inetorgperson; an mdb database
under `root`; the monitor database), loads the base entries and any students with slapadd,
and runs `slapd -d 0` in the foreground on 127.0.0.1 at a port chosen at run time
(and, with `tls=True`, ldaps:// on a second port and StartTLS, with a certificate made on
the spot). `stop()` and `start()` again keep the database, as a restarted server would.

    dc=example,dc=com
    ├── cn=admin             the rootdn (reads cn=Monitor)
    ├── ou=Services
    │   └── cn=wodmail       what wodmail binds as: may write userPassword, add students
    └── ou=People            uid=student{stdid}, each with a known password

Debian packages `slapd` and `ldap-utils` provide it (scripts/test installs them). When
they are missing, the tests fail saying so: they never skip.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from passlib.hash import ldap_salted_sha1  # type: ignore[import-untyped,unused-ignore]

from tests.ports import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # ldap3 with pyasn1 >= 0.6
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.dn import escape_rdn

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")

SUFFIX = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{SUFFIX}"
SERVICE_DN = f"cn=wodmail,ou=Services,{SUFFIX}"
PEOPLE_DN = f"ou=People,{SUFFIX}"


def old_password(stdid: int) -> str:
    """The password each student has in the directory before wodmail touches it (tests)."""
    return f"before-wodmail-{stdid}"


def new_password(stdid: int) -> str:
    """The password the tests have wodmail set for a student."""
    return f"set-by-wodmail-{stdid}"


def tool(name: str) -> str:
    """The path of an OpenLDAP program; an AssertionError (a failure, not a skip) when missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise AssertionError(f"{name} is not installed: install the Debian packages slapd and ldap-utils")
    return found


def student_dn(stdid: int, people: str = PEOPLE_DN) -> str:
    return f"uid=student{stdid},{people}"


def ou_dn(name: str) -> str:
    """The DN of an organizational unit `name` (any characters) under the suffix."""
    return f"ou={escape_rdn(name)},{SUFFIX}"


def _ldif(dn: str, attributes: Mapping[str, str | Iterable[str]]) -> str:
    """One LDIF record, every value base64-encoded (safe for any character)."""

    def line(name: str, value: str) -> str:
        return f"{name}:: {base64.b64encode(value.encode()).decode()}\n"

    text = line("dn", dn)
    for name, values in attributes.items():
        for value in [values] if isinstance(values, str) else values:
            text += line(name, value)
    return text + "\n"


class Slapd:
    """One slapd under `root`; `url` (and `ldaps_url`, `ldapi_url`) say where it listens."""

    def __init__(self, root: Path, *, tls: bool = False, ldapi: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.tls = tls
        # A unix socket path must stay short (108 bytes): not under a deep tmp_path.
        self.socket_path = Path(tempfile.mkdtemp(prefix="wodldap-")) / "ldapi" if ldapi else None
        self.config = root / "slapd.conf"
        self.database = root / "db"
        self.log = root / "slapd.log"
        self.admin_password = secrets.token_urlsafe(18)
        self.service_password = secrets.token_urlsafe(18)
        self.ca_file = root / "ca.pem"
        self.process: subprocess.Popen[bytes] | None = None
        self._entries: list[str] = []
        self._admin: ldap3.Connection | None = None
        self._loaded = False

    # -- where it listens ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        assert self.tls_port is not None, "Slapd(tls=True) serves ldaps://"
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ldapi_url(self) -> str:
        assert self.socket_path is not None, "Slapd(ldapi=True) serves ldapi://"
        return "ldapi://" + urllib.parse.quote(str(self.socket_path), safe="")

    def location_keys(self, **extra: object) -> dict[str, object]:
        """The LDAP keys of a location that binds as the service account."""
        return {
            "LDAPURI": self.url,
            "LDAPBINDDN": SERVICE_DN,
            "LDAPBINDPW": self.service_password,
            "LDAPDMN": SUFFIX,
            **extra,
        }

    # -- what it holds before it starts ------------------------------------------------------

    def add_ou(self, name: str) -> str:
        """An organizational unit under the suffix, loaded at the first start; its DN."""
        dn = ou_dn(name)
        self._entries.append(_ldif(dn, {"objectClass": "organizationalUnit", "ou": name}))
        return dn

    def add_student(self, stdid: int, password: str, people: str = PEOPLE_DN) -> str:
        """uid=student{stdid},`people` with `password` ({SSHA}); loaded at the first start
        (or added online once the server runs). Returns the DN."""
        dn = student_dn(stdid, people)
        attributes = {
            "objectClass": ["inetOrgPerson"],
            "uid": f"student{stdid}",
            "cn": f"Student {stdid}",
            "sn": "Student",
            "userPassword": ldap_salted_sha1.hash(password),
        }
        if self._loaded:
            admin = self.admin()
            if not admin.add(dn, attributes=attributes):  # type: ignore[no-untyped-call]
                raise AssertionError(f"could not add {dn}: {admin.result['description']}")
        else:
            self._entries.append(_ldif(dn, attributes))
        return dn

    def add_students(self, passwords: Mapping[int, str], people: str = PEOPLE_DN) -> None:
        for stdid, password in passwords.items():
            self.add_student(stdid, password, people)

    # -- running -------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Self:
        if not self._loaded:
            self._write_config()
            self._load()
        urls = [self.url]
        if self.socket_path is not None:
            urls.append(self.ldapi_url)
        if self.tls_port is not None:
            urls.append(self.ldaps_url)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [tool("slapd"), "-d", "0", "-f", str(self.config), "-h", " ".join(urls)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.root),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"slapd exited {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"slapd did not listen on {self.url} in {timeout} s:\n{self.logs()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM); the database stays for the next start."""
        self._drop_admin()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def remove(self) -> None:
        """Stop, and remove what lives outside `root` (the ldapi socket's folder)."""
        self.stop()
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def kill(self) -> None:
        """Stop the server the hard way (SIGKILL), as a crash would."""
        self._drop_admin()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- looking at it -------------------------------------------------------------------------

    def can_bind(self, dn: str, password: str) -> bool:
        """Whether a simple bind as `dn` with `password` succeeds (a fresh connection)."""
        connection = ldap3.Connection(
            ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE),
            user=dn,
            password=password,
            receive_timeout=10,
            check_names=False,
        )
        try:
            return bool(connection.bind())
        finally:
            connection.unbind()

    def admin(self) -> ldap3.Connection:
        """A kept connection bound as the rootdn (reopened after a restart)."""
        if self._admin is None:
            connection = ldap3.Connection(
                ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE),
                user=ADMIN_DN,
                password=self.admin_password,
                receive_timeout=10,
                check_names=False,
                raise_exceptions=False,
            )
            if not connection.bind():
                raise AssertionError(f"cannot bind as {ADMIN_DN}: {connection.result['description']}")
            self._admin = connection
        return self._admin

    def entry(self, dn: str) -> dict[str, list[bytes]] | None:
        """The attributes of `dn` (raw values), or None when there is no such entry."""
        admin = self.admin()
        if not admin.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["*"]) or not admin.response:
            return None
        return {name: list(values) for name, values in admin.response[0]["raw_attributes"].items()}

    def user_passwords(self, dn: str) -> list[bytes]:
        entry = self.entry(dn)
        assert entry is not None, f"no entry {dn}"
        return entry.get("userPassword", [])

    def connections_total(self) -> int:
        """How many connections the server accepted since it started (cn=Monitor), counting
        the kept admin connection once."""
        admin = self.admin()
        admin.search("cn=Total,cn=Connections,cn=Monitor", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["+"])
        assert admin.response, f"cannot read cn=Monitor: {admin.result}"
        return int(admin.response[0]["raw_attributes"]["monitorCounter"][0])

    def _drop_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(LDAPException, OSError):
                self._admin.unbind()
            self._admin = None

    # -- configuration -------------------------------------------------------------------------

    def _write_config(self) -> None:
        for schema in SCHEMAS:
            if not (SCHEMA_DIR / f"{schema}.schema").is_file():
                raise AssertionError(f"{SCHEMA_DIR}/{schema}.schema is missing: install the Debian package slapd")
        self.database.mkdir(exist_ok=True)
        lines = [f"include {SCHEMA_DIR / schema}.schema" for schema in SCHEMAS]
        lines += [
            f"pidfile {self.root / 'slapd.pid'}",
            f"argsfile {self.root / 'slapd.args'}",
            f"modulepath {MODULE_DIR}",
            "moduleload back_mdb",
            "loglevel none",
        ]
        if self.tls:
            lines += self._tls_config()
        lines += [
            "database mdb",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ADMIN_DN}"',
            f"rootpw {ldap_salted_sha1.hash(self.admin_password)}",
            f"directory {self.database}",
            "maxsize 67108864",
            "index objectClass eq",
            "access to attrs=userPassword",
            f'    by dn.exact="{SERVICE_DN}" write',
            "    by anonymous auth",
            "    by * none",
            f'access to dn.subtree="{SUFFIX}"',
            f'    by dn.exact="{SERVICE_DN}" write',
            "    by * read",
            "database monitor",
            "access to *",
            f'    by dn.exact="{ADMIN_DN}" read',
            "    by * none",
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)

    def _load(self) -> None:
        base = [
            _ldif(SUFFIX, {"objectClass": ["dcObject", "organization"], "dc": "example", "o": "Example"}),
            _ldif(f"ou=Services,{SUFFIX}", {"objectClass": "organizationalUnit", "ou": "Services"}),
            _ldif(
                SERVICE_DN,
                {
                    "objectClass": ["organizationalRole", "simpleSecurityObject"],
                    "cn": "wodmail",
                    "userPassword": ldap_salted_sha1.hash(self.service_password),
                },
            ),
            _ldif(PEOPLE_DN, {"objectClass": "organizationalUnit", "ou": "People"}),
        ]
        ldif = self.root / "initial.ldif"
        ldif.write_text("".join(base + self._entries))
        result = subprocess.run(
            [tool("slapadd"), "-q", "-f", str(self.config), "-l", str(ldif)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"slapadd failed ({result.returncode}): {result.stderr[-2000:]}")
        self._loaded = True

    def _tls_config(self) -> list[str]:
        cert, key = self.root / "server.pem", self.root / "server.key"
        write_certificates(self.ca_file, cert, key, "127.0.0.1")
        return [
            f"TLSCACertificateFile {self.ca_file}",
            f"TLSCertificateFile {cert}",
            f"TLSCertificateKeyFile {key}",
        ]


def write_certificates(ca_file: Path, cert_file: Path, key_file: Path, address: str) -> None:
    """A throwaway CA (PEM in `ca_file`) and a server certificate for `address` signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wodmail test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_file, 0o600)
