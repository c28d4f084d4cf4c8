"""Replace the workshop's notebooks with huge ones, then exit.

Dense notebooks are valid JSON made of millions of tiny executed code cells (a parser that
builds them all takes hundreds of megabytes); sparse ones claim many gigabytes and hold
next to nothing on disk.

usage: huge.py FOLDER [--dense NAME:BYTES]... [--sparse NAME:BYTES]...
"""

from __future__ import annotations

import argparse
import os

CELL = b'{"cell_type":"code","execution_count":1,"metadata":{},"outputs":[],"source":"x"},'
HEAD = b'{"nbformat":4,"nbformat_minor":5,"metadata":{},"cells":['
TAIL = b'{"cell_type":"code","execution_count":1,"metadata":{},"outputs":[],"source":""}]}\n'


def replace(folder: int, name: str) -> int:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)


def dense(folder: int, name: str, size: int) -> None:
    """A notebook of exactly `size` bytes: cells, then spaces (still valid JSON) to fill."""
    cells = (size - len(HEAD) - len(TAIL)) // len(CELL)
    padding = size - len(HEAD) - len(TAIL) - cells * len(CELL)
    chunk = CELL * 4096
    fd = replace(folder, name)
    with os.fdopen(fd, "wb") as out:
        out.write(HEAD)
        for _ in range(cells // 4096):
            out.write(chunk)
        out.write(CELL * (cells % 4096))
        out.write(b" " * padding)
        out.write(TAIL)


def sparse(folder: int, name: str, size: int) -> None:
    fd = replace(folder, name)
    os.write(fd, HEAD)
    os.ftruncate(fd, size)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--dense", action="append", default=[])
    parser.add_argument("--sparse", action="append", default=[])
    args = parser.parse_args()
    folder = os.open(args.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    for item in args.dense:
        name, size = item.rsplit(":", 1)
        dense(folder, name, int(size))
    for item in args.sparse:
        name, size = item.rsplit(":", 1)
        sparse(folder, name, int(size))
    print("ready", flush=True)


if __name__ == "__main__":
    main()
