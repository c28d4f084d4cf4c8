"""A real Postfix for the relay tests, run from a configuration of its own.

`Postfix()` writes a main.cf and a master.cf into a folder of its own and runs
`postfix -c FOLDER start`: an smtpd on 127.0.0.1 at a port chosen at run time that takes
mail from loopback for any domain (but refuses REFUSED) and delivers it, through Postfix's
`virtual` agent, to one mailbox file (mbox) in that folder. `stop()` and `start()` again keep its queue, as a
restarted server would; `remove()` stops it and deletes the folder.

The folder is made under /var/tmp (root's, 0755), not in pytest's tmp_path: Postfix's own
daemons run as the `postfix` user and deliver as `nobody`, and pytest's base folder
(/tmp/pytest-of-root) is 0700, so they could not reach a queue or a mailbox there (its log
daemon cannot even open its log file).

The Debian package `postfix` provides it (scripts/test installs it, with debconf's "No
configuration": no system instance). When it is missing, the tests fail saying so.
"""

from __future__ import annotations

import mailbox
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.ports import free_port

POSTFIX = Path("/usr/sbin/postfix")
#: The recipient this Postfix refuses (554), whoever sends.
REFUSED = "nobody-here@example.org"

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
virtual   unix - n n - - virtual
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A Postfix instance on 127.0.0.1:`port` delivering every mail to `mailbox_file`."""

    def __init__(self) -> None:
        if not POSTFIX.exists():
            raise AssertionError("Postfix is not installed: the relay tests need the Debian package postfix")
        self.root = Path(tempfile.mkdtemp(prefix="wodmail-postfix-", dir="/var/tmp"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.config = self.root / "conf"
        self.mail_dir = self.root / "mail"
        self.log_file = self.root / "maillog"
        nobody = pwd.getpwnam("nobody")
        postfix_user = pwd.getpwnam("postfix")
        for folder in (self.config, self.root / "queue", self.root / "data", self.mail_dir):
            folder.mkdir()
        os.chown(self.root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.root / "queue",
            "data_directory": self.root / "data",
            "maillog_file": self.log_file,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mta.test",
            "mydomain": "mta.test",
            "myorigin": "mta.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            # One address it refuses for good (5xx), as a real MTA refuses an unknown user.
            "smtpd_recipient_restrictions": f"check_recipient_access inline:{{{REFUSED}=REJECT}}",
            "virtual_mailbox_domains": "static:all",
            "virtual_mailbox_base": self.mail_dir,
            "virtual_mailbox_maps": "static:mailbox",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "virtual_minimum_uid": "1",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "yes",
        }
        (self.config / "main.cf").write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        (self.config / "master.cf").write_text(MASTER_CF.format(port=self.port))

    @property
    def mailbox_file(self) -> Path:
        return self.mail_dir / "mailbox"

    def _postfix(self, action: str) -> None:
        done = subprocess.run(
            [str(POSTFIX), "-c", str(self.config), action], capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"postfix {action} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")

    def start(self, timeout: float = 15.0) -> Self:
        self._postfix("start")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(3) == b"220":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix did not answer on port {self.port}:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every Postfix process of this instance (its queue stays)."""
        if (self.root / "queue" / "pid" / "master.pid").exists():
            self._postfix("stop")

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def logs(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def messages(self) -> list[Message]:
        """Every mail delivered so far, oldest first."""
        if not self.mailbox_file.exists():
            return []
        box = mailbox.mbox(self.mailbox_file, create=False)
        try:
            return [box.get_message(key) for key in box.iterkeys()]
        finally:
            box.close()

    def delivered(self) -> int:
        """How many mails the `virtual` agent wrote to the mailbox so far (from its log: the
        mailbox may be in the middle of a write)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return 0
        return text.count("status=sent (delivered to mailbox)")

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Message]:
        """Wait until `count` mails were delivered; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            if self.delivered() >= count:
                return self.messages()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.delivered()} of {count} mails delivered in {timeout} s:\n{self.logs()}")
            time.sleep(0.1)
