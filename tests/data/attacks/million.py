"""Fill a folder with COUNT names, a thousand per sub-folder, then exit.

The names are hard links to a few empty files (at most 60,000 links each): to an erase a
name is a name, and making a million new inodes takes minutes on a small test machine
where linking takes seconds.

usage: million.py FOLDER COUNT
"""

from __future__ import annotations

import os
import stat
import sys

LINKS_PER_FILE = 60_000


def main() -> None:
    folder, count = sys.argv[1], int(sys.argv[2])
    top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    os.mkdir("many", 0o755, dir_fd=top)
    many = os.open("many", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
    made = 0
    source = ""
    for index in range((count + 999) // 1000):
        name = f"{index:04d}"
        os.mkdir(name, 0o755, dir_fd=many)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=many)
        for number in range(min(1000, count - made)):
            if made % LINKS_PER_FILE == 0:
                source = f"{name}/f{number}"
                os.mknod(source, stat.S_IFREG | 0o644, dir_fd=many)
            else:
                os.link(source, f"f{number}", src_dir_fd=many, dst_dir_fd=fd)
            made += 1
        os.close(fd)
    print("ready", made, flush=True)


if __name__ == "__main__":
    main()
