"""Plant symlinks named like what the daemon is about to write, pointing where the student
may not write.

In bursts whenever someone else works in the home (inotify), every name that is missing is
made again as a symlink: the names of the skeleton's and the workshop's files and folders,
planted right after the daemon's erase listed (and emptied) the home, so a daemon that
copies into the home by path writes through them.

usage: plant.py HOME STUDENTDIR SECONDS [--pad COUNT] [--link NAME=TARGET]...
"""

from __future__ import annotations

import os

from linux import Home, Watch, pad, quietly, racing_attack_arguments, run_in_bursts


def main() -> None:
    parser = racing_attack_arguments()
    parser.add_argument("--link", action="append", default=[], help="NAME=TARGET")
    args = parser.parse_args()
    home = Home(args.home)
    links = [tuple(item.split("=", 1)) for item in args.link]

    def step() -> None:
        for fd in home.folders():
            for name, target in links:
                quietly(os.symlink, target, name, dir_fd=fd)

    pad(home.folders()[0], args.pad)
    run_in_bursts(step, Watch(args.home, args.student_dir), args.seconds)


if __name__ == "__main__":
    main()
