"""Run as the student: ignore SIGTERM and SIGSTOP every other process of this uid the moment
it appears (the child wodmail forks as the student to kill(-1) included)."""

import os
import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
me, uid = os.getpid(), os.getuid()
open(os.environ["READY"], "w").close()
while True:
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    os.kill(int(name), signal.SIGSTOP)
            except OSError:
                pass
