"""Make a chain of folders DEPTH deep (far beyond PATH_MAX and Python's recursion limit),
with a file at the bottom, then exit.

usage: deep.py FOLDER NAME DEPTH    (the chain is FOLDER/NAME/d/d/.../d/bottom.txt)
"""

from __future__ import annotations

import os
import stat
import sys


def main() -> None:
    folder, name, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    for level in range(depth):
        child = name if level == 0 else "d"
        os.mkdir(child, 0o755, dir_fd=fd)
        inner = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.mknod("bottom.txt", stat.S_IFREG | 0o644, dir_fd=fd)
    os.close(fd)
    print("ready", flush=True)


if __name__ == "__main__":
    main()
