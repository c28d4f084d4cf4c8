"""Put FIFOs and unix sockets where the daemon expects folders and files.

In bursts whenever someone else works in the home (inotify): FIFOs are made under the
names of the skeleton's files and the workshop's notebooks (an open for writing, or a
blocking open for reading, waits for ever), unix sockets under other names, and folders
are exchanged atomically (renameat2 RENAME_EXCHANGE) with a FIFO sibling `NAME~`, so that
what was a folder when root listed the home is a FIFO when root opens it.

usage: fifo.py HOME STUDENTDIR SECONDS [--pad COUNT] [--fifo NAME]... [--socket NAME]... [--folder NAME]...
"""

from __future__ import annotations

import os
import socket
import stat

from linux import Home, Watch, exchange, pad, quietly, racing_attack_arguments, run_in_bursts


def make_fifo(fd: int, name: str) -> None:
    quietly(os.mkfifo, name, 0o644, dir_fd=fd)


def make_socket(fd: int, name: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        quietly(sock.bind, f"/proc/self/fd/{fd}/{name}")


def put(fd: int, name: str, kind: int, make) -> None:
    """Make `name` a FIFO or a socket (`kind`), removing the file the daemon put there."""
    try:
        found = stat.S_IFMT(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        found = None
    if found == kind:
        return
    if found is not None:
        quietly(os.unlink, name, dir_fd=fd)
    make(fd, name)


def make_folder(fd: int, name: str) -> None:
    quietly(os.mkdir, name, 0o755, dir_fd=fd)
    quietly(os.mknod, f"{name}/bait.txt", stat.S_IFREG | 0o644, dir_fd=fd)
    quietly(os.mkfifo, f"{name}/bait.fifo", dir_fd=fd)


def main() -> None:
    parser = racing_attack_arguments()
    parser.add_argument("--fifo", action="append", default=[])
    parser.add_argument("--socket", action="append", default=[])
    parser.add_argument("--folder", action="append", default=[])
    args = parser.parse_args()
    home = Home(args.home)

    def plant(fd: int) -> None:
        for name in args.fifo:
            put(fd, name, stat.S_IFIFO, make_fifo)
        for name in args.socket:
            put(fd, name, stat.S_IFSOCK, make_socket)

    def step() -> None:
        for fd in home.folders():
            for name in args.folder:
                if not exchange(fd, name, f"{name}~"):
                    make_folder(fd, name)
                    make_fifo(fd, f"{name}~")
            plant(fd)

    pad(home.folders()[0], args.pad)
    for fd in home.folders():
        for name in args.folder:
            make_folder(fd, name)
            make_fifo(fd, f"{name}~")
        plant(fd)
    run_in_bursts(step, Watch(args.home, args.student_dir), args.seconds)


if __name__ == "__main__":
    main()
