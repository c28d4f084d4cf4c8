"""Swap the home's folders and files with symlinks to places the student may not write.

Each named entry gets a sibling `NAME~`, a symlink to a root-owned target; the two are
exchanged atomically (renameat2 RENAME_EXCHANGE) over and over, in bursts whenever someone
else works in the home (inotify), so that a name that was a folder when root listed it is
a symlink when root uses it. Entries the daemon erases are made again at once.

usage: swap.py HOME STUDENTDIR SECONDS [--pad COUNT] --folder-target DIR --file-target FILE
               [--folder NAME]... [--file NAME]...
"""

from __future__ import annotations

import os
import stat

from linux import Home, Watch, exchange, pad, quietly, racing_attack_arguments, run_in_bursts


def make_folder(fd: int, name: str) -> None:
    """A folder with a file and a sub-folder in it: something for root to walk into."""
    quietly(os.mkdir, name, 0o755, dir_fd=fd)
    quietly(os.mknod, f"{name}/bait.txt", stat.S_IFREG | 0o644, dir_fd=fd)
    quietly(os.mkdir, f"{name}/sub", 0o755, dir_fd=fd)
    quietly(os.mknod, f"{name}/sub/bait.txt", stat.S_IFREG | 0o644, dir_fd=fd)


def make_file(fd: int, name: str) -> None:
    quietly(os.mknod, name, stat.S_IFREG | 0o644, dir_fd=fd)


def main() -> None:
    parser = racing_attack_arguments()
    parser.add_argument("--folder-target", required=True)
    parser.add_argument("--file-target", required=True)
    parser.add_argument("--folder", action="append", default=[])
    parser.add_argument("--file", action="append", default=[])
    args = parser.parse_args()
    home = Home(args.home)
    pairs = [(name, make_folder, args.folder_target) for name in args.folder]
    pairs += [(name, make_file, args.file_target) for name in args.file]

    def step() -> None:
        for fd in home.folders():
            for name, make, target in pairs:
                if not exchange(fd, name, f"{name}~"):
                    make(fd, name)
                    quietly(os.symlink, target, f"{name}~", dir_fd=fd)

    pad(home.folders()[0], args.pad)
    for fd in home.folders():  # the bait is in place before the daemon comes
        for name, make, target in pairs:
            make(fd, name)
            quietly(os.symlink, target, f"{name}~", dir_fd=fd)
    run_in_bursts(step, Watch(args.home, args.student_dir), args.seconds)


if __name__ == "__main__":
    main()
