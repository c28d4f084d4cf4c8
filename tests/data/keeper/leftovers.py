"""Run as the student: leave things outside the home for the next person with this uid (the
folders read-only)."""

import ctypes
import os
import sys

tag = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT, IPC_PRIVATE = 0o1000, 0
print(
    libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600),
    libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600),
    libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600),
)
for folder in ("/tmp", "/var/tmp", "/dev/shm"):
    os.makedirs(f"{folder}/{tag}/deeper", exist_ok=True)
    with open(f"{folder}/{tag}/deeper/note", "w") as note:
        note.write("for whoever is student next\n")
    # read-only, as `chmod -R a-w` leaves a tree: only its owner may make it writable again
    os.chmod(f"{folder}/{tag}/deeper", 0o555)
    os.chmod(f"{folder}/{tag}", 0o555)
