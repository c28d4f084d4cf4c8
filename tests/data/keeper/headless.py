"""Run as the student: the main thread leaves with exit() (not exit_group()), so the leader
is a zombie, which a look at /proc that skips zombies misses, while a thread goes on
running. Writes READY once the leader is gone."""

import ctypes
import os
import threading
import time

ready = os.environ["READY"]


def go_on() -> None:
    while not os.path.exists(ready + ".leader-gone"):
        time.sleep(0.01)
    open(ready, "w").close()
    while True:
        time.sleep(0.1)


threading.Thread(target=go_on).start()
open(ready + ".leader-gone", "w").close()
ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: this thread only
