"""A disk that loses power on demand: ext4 on a loop device over a file that forgets what was not flushed.

This kernel has no device-mapper (no dm-flakey, no dm-log-writes), so the disk with a volatile
write cache is a small FUSE file system (mfusepy over libfuse 3, `VolatileDisk`) that shows one
file, `disk`, backed by a file on the real disk, the *stable* image:

- a write lands in memory (`pending`, by 4 KiB page): reads see it, the stable image does not;
- FUSE_FSYNC (fsync or fdatasync on the file) writes every pending page to the stable image;
- FUSE_FLUSH (sent at every close(2) of the file) and FUSE_RELEASE do not: closing a file is
  not a cache flush, and the loop driver keeps the file open anyway;
- a power cut (`cut` written to the `control` file) drops every pending page (or, with
  `keep=F`, keeps a random share F of them: a disk that wrote part of its cache back, in any
  order), and from then on every write and fsync is ignored, as a disk without power would;
- `arm N` cuts the power as the N-th write from then on arrives (that write is lost too):
  a cut in the middle of whatever the kernel was writing, a journal commit half sent, say.
  After such a cut every write and fsync fails (EIO), so nothing the processes above do
  after it can be taken for durable: an fsync that returned success returned before the cut.

The loop driver in buffered mode (the default; `losetup -l -O DIO` says 0) turns every
REQ_PREFLUSH, REQ_FUA (the queue takes no FUA: the block layer makes it a flush after the
write) and REQ_OP_FLUSH it gets into `vfs_fsync(backing file)`, which FUSE sends as FUSE_FSYNC
(datasync 0). So what ext4 makes durable (its journal commit blocks, the flushes of
`fsync`, `syncfs` and `sync`) is exactly what reaches the stable image. `PowerCutRig.evidence`
shows it on the live stack: a file written and closed without a flush leaves the stable
image as it was; `fsync` on it sends FUSE_FSYNC and changes the stable image.

`PowerCutRig` puts ext4 (with its journal, default mount options) on a loop device over that
file, and cuts the power: the processes named are stopped (SIGSTOP, so nothing they do
after the cut can be answered), the power cut, the processes killed, the ext4 mount and the
loop device torn down, the FUSE file system unmounted; `power_on` mounts the FUSE file
system again from what survived, runs e2fsck on it and mounts ext4 again. Mounts, loop
devices and the FUSE server are always taken down by `close`.

The FUSE server is this module run as a program (as root):

    python -m tests.powercut STABLE_IMAGE MOUNTPOINT STATS_FILE
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PAGE = 4096
REPO = Path(__file__).resolve().parent.parent


class VolatileDisk:
    """The FUSE operations: `disk` (the volatile disk) and `control` (write `cut`, `stats`)."""

    use_ns = True

    def __init__(self, stable: Path, stats_file: Path) -> None:
        self.fd = os.open(stable, os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        if self.size % PAGE:
            raise ValueError(f"{stable}: the image's size must be a multiple of {PAGE}")
        self.stats_file = stats_file
        self.pending: dict[int, bytearray] = {}
        self.dead = False
        self.failing = False  # after an armed cut: writes and fsyncs fail
        self.armed: tuple[int, float, int] | None = None  # writes to go, keep, seed
        self.stats: Counter[str] = Counter()
        self.started = time.time()
        self._write_stats()

    # --- what the kernel asks ---

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        base = {"st_uid": 0, "st_gid": 0, "st_atime": self.started, "st_mtime": self.started, "st_ctime": self.started}
        if path == "/":
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/disk":
            return {**base, "st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": self.size}
        if path == "/control":
            return {**base, "st_mode": stat.S_IFREG | 0o200, "st_nlink": 1, "st_size": 0}
        raise OSError(errno.ENOENT, path)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", "disk", "control"]

    def open(self, path: str, flags: int) -> int:
        self.getattr(path)
        self.stats[f"open of {path.lstrip('/')}"] += 1
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if path == "/control":
            return 0
        raise OSError(errno.EPERM, "the disk has a fixed size")

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path != "/disk" or offset >= self.size:
            return b""
        end = min(offset + size, self.size)
        data = bytearray(os.pread(self.fd, end - offset, offset))
        for page in range(offset // PAGE, (end - 1) // PAGE + 1):
            held = self.pending.get(page)
            if held is not None:
                start = max(offset, page * PAGE)
                stop = min(end, (page + 1) * PAGE)
                data[start - offset : stop - offset] = held[start - page * PAGE : stop - page * PAGE]
        self.stats["read"] += 1
        return bytes(data)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == "/control":
            self.command(data.decode().strip())
            return len(data)
        if path != "/disk":
            raise OSError(errno.EACCES, path)
        if offset + len(data) > self.size:
            raise OSError(errno.ENOSPC, "past the end of the disk")
        self.stats["write"] += 1
        self.stats["bytes written"] += len(data)
        if self.armed is not None:
            left, keep, seed = self.armed
            self.armed = (left - 1, keep, seed) if left > 1 else None
            if left <= 1:
                self.cut(keep, seed)
                self.failing = True
                self._write_stats()
        if self.dead:
            self.stats["write after the cut"] += 1
            if self.failing:
                raise OSError(errno.EIO, "the disk has no power")
            return len(data)
        self._put(offset, data)
        return len(data)

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        """Punching a hole or zeroing a range (a discard through the loop device) writes zeros."""
        if path != "/disk":
            raise OSError(errno.EOPNOTSUPP, path)
        self.stats["fallocate"] += 1
        if not self.dead:
            end = min(offset + size, self.size)
            while offset < end:
                chunk = min(end - offset, 1 << 20)
                self._put(offset, bytes(chunk))
                offset += chunk
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.stats["fdatasync" if datasync else "fsync"] += 1
        if path == "/disk" and self.failing:
            raise OSError(errno.EIO, "the disk has no power")
        if path == "/disk" and not self.dead:
            self.stats["pages made stable"] += len(self.pending)
            self._make_stable(self.pending)
            self.pending.clear()
        return 0

    def flush(self, path: str, fh: int) -> int:
        self.stats[f"flush (close) of {path.lstrip('/')}"] += 1
        return 0

    def release(self, path: str, fh: int) -> int:
        self.stats[f"release of {path.lstrip('/')}"] += 1
        return 0

    # --- the power ---

    def command(self, text: str) -> None:
        words = text.split()
        options = dict(word.split("=", 1) for word in words[1:] if "=" in word)
        keep, seed = float(options.get("keep", 0)), int(options.get("seed", 0))
        if words[:1] == ["cut"]:
            self.cut(keep, seed)
        elif words[:1] == ["arm"]:
            self.armed = (max(1, int(words[1])), keep, seed)
        elif words != ["stats"]:
            raise OSError(errno.EINVAL, f"unknown command {text!r}")
        self._write_stats()

    def cut(self, keep: float = 0.0, seed: int = 0) -> None:
        """Lose power: drop what is pending (or all but a random `keep` share of it)."""
        if self.dead:
            return
        kept = {}
        if keep > 0:
            rng = random.Random(seed)
            kept = {page: data for page, data in self.pending.items() if rng.random() < keep}
            self._make_stable(kept)
        self.stats["cuts"] += 1
        self.stats["pages lost in the cut"] += len(self.pending) - len(kept)
        self.stats["pages kept in the cut"] += len(kept)
        self.pending.clear()
        self.dead = True
        self.armed = None

    def _put(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        while done < len(data):
            page, within = divmod(offset + done, PAGE)
            length = min(PAGE - within, len(data) - done)
            held = self.pending.get(page)
            if held is None:
                if length == PAGE:
                    self.pending[page] = bytearray(view[done : done + PAGE])
                    done += length
                    continue
                held = bytearray(os.pread(self.fd, PAGE, page * PAGE))
                self.pending[page] = held
            held[within : within + length] = view[done : done + length]
            done += length

    def _make_stable(self, pages: dict[int, bytearray]) -> None:
        for page in sorted(pages):
            os.pwrite(self.fd, pages[page], page * PAGE)

    def _write_stats(self) -> None:
        temporary = self.stats_file.with_name(self.stats_file.name + ".tmp")
        temporary.write_text(json.dumps({**self.stats, "pending pages": len(self.pending), "dead": self.dead,
                                         "cut by a write": self.failing}))  # fmt: skip
        os.replace(temporary, self.stats_file)


def serve(stable: Path, mountpoint: Path, stats_file: Path) -> None:
    import mfusepy  # type: ignore[import-untyped,unused-ignore]

    disk = VolatileDisk(stable, stats_file)
    # One thread: the kernel's requests are answered in the order they come, no locks needed.
    mfusepy.FUSE(disk, str(mountpoint), foreground=True, nothreads=True, fsname="powercut", subtype="powercut")


# --- the rig the tests drive ---


def run(*argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip() or result.stdout}")
    return result


def mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == target for line in mountinfo)


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class PowerCutRig:
    """ext4 on a loop device over a `VolatileDisk`, mounted at `self.mount`."""

    def __init__(self, work: Path, size_mib: int = 192) -> None:
        self.work = work
        self.stable = work / "stable.img"
        self.fuse_dir = work / "fuse"
        self.mount = work / "ext4"
        self.stats_file = work / "fuse-stats.json"
        self.fuse_log = work / "fuse.log"
        self.size_mib = size_mib
        self.loop: str | None = None
        self.fuse: subprocess.Popen[bytes] | None = None
        self.fsck: list[tuple[int, str]] = []  # e2fsck's exit status and last line, one per power-on
        self.totals: Counter[str] = Counter()  # the FUSE server's counters, summed over its lives

    # --- the life of the disk ---

    def make(self) -> PowerCutRig:
        """A new, empty ext4 file system (with its journal) on the stable image."""
        for folder in (self.fuse_dir, self.mount):
            folder.mkdir(parents=True, exist_ok=True)
        with open(self.stable, "wb") as image:
            image.truncate(self.size_mib << 20)
        run(
            "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            str(self.stable),
        )  # fmt: skip
        return self

    def power_on(self) -> None:
        """Serve the stable image, attach it to a loop device, check it, mount it."""
        with open(self.fuse_log, "ab") as log:
            self.fuse = subprocess.Popen(
                [sys.executable, "-m", "tests.powercut", str(self.stable), str(self.fuse_dir), str(self.stats_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )
        deadline = time.monotonic() + 20
        while not (mounted(self.fuse_dir) and (self.fuse_dir / "disk").exists()):
            if self.fuse.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the FUSE server did not mount: {self.fuse_log.read_text()[-2000:]}")
            time.sleep(0.02)
        self.loop = run("losetup", "--find", "--show", "--direct-io=off", str(self.fuse_dir / "disk")).stdout.strip()
        fsck = run("e2fsck", "-p", self.loop, check=False)
        if fsck.returncode >= 4:  # -p could not fix it alone
            fsck = run("e2fsck", "-fy", self.loop, check=False)
        said = (fsck.stdout + fsck.stderr).strip().splitlines()
        self.fsck.append((fsck.returncode, said[-1] if said else ""))
        if fsck.returncode >= 4:
            raise RuntimeError(f"e2fsck could not repair the file system ({fsck.returncode}): {fsck.stdout}")
        run("mount", "-t", "ext4", self.loop, str(self.mount))

    def arm(self, writes: int, keep: float = 0.0, seed: int = 0) -> None:
        """Cut the power as the `writes`-th write from now reaches the disk."""
        self.control(f"arm {writes} keep={keep} seed={seed}")

    def wait_armed_cut(self, timeout: float) -> bool:
        """Wait until an armed cut happened; False if it did not within `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if json.loads(self.stats_file.read_text()).get("dead"):
                return True
            time.sleep(0.005)
        return False

    def cut(self, victims: Iterable[int] = (), keep: float = 0.0, seed: int = 0) -> dict[str, Any]:
        """Cut the power under `victims` (pids: stopped first, killed after) and take it all down
        (a cut already made by `arm` stays as it was).

        Returns the FUSE server's counters as they were right after the cut.
        """
        victims = list(victims)
        signal_all(victims, signal.SIGSTOP)  # nothing they do after the cut may reach anyone
        self.control(f"cut keep={keep} seed={seed}")
        stats = self.read_stats()
        signal_all(victims, signal.SIGKILL)
        for pid in victims:
            wait_gone(pid)
        self.power_off()
        return stats

    def power_off(self) -> None:
        """Unmount ext4, detach the loop device, unmount the FUSE file system (after a cut, or
        to end the test)."""
        if mounted(self.mount):
            run("umount", "-l", str(self.mount), check=False)
        if self.loop is not None:
            run("losetup", "-d", self.loop, check=False)  # busy: detached once the last user goes
            backing = Path("/sys/block", os.path.basename(self.loop), "loop", "backing_file")
            deadline = time.monotonic() + 20
            while backing.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.loop = None
        if self.fuse is not None:
            with contextlib.suppress(Exception):
                self.record_totals()
            deadline = time.monotonic() + 20
            while mounted(self.fuse_dir):
                if run("umount", str(self.fuse_dir), check=False).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    run("umount", "-l", str(self.fuse_dir), check=False)
                    break
                time.sleep(0.05)
            try:
                self.fuse.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.fuse.kill()
                self.fuse.wait()
            self.fuse = None

    def close(self) -> None:
        """Take everything down, whatever state it is in (the test's teardown): a process left
        using the file system (a daemon of a test that failed) is killed first."""
        try:
            users = users_of(self.mount) if mounted(self.mount) else []
            signal_all(users, signal.SIGKILL)
            for pid in users:
                wait_gone(pid)
            self.power_off()
        finally:
            if self.fuse is not None and self.fuse.poll() is None:
                self.fuse.kill()
                self.fuse.wait()
            if mounted(self.fuse_dir):
                run("umount", "-l", str(self.fuse_dir), check=False)

    # --- looking at it ---

    def control(self, text: str) -> None:
        fd = os.open(self.fuse_dir / "control", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def read_stats(self) -> dict[str, Any]:
        self.control("stats")
        stats: dict[str, Any] = json.loads(self.stats_file.read_text())
        return stats

    def record_totals(self) -> None:
        if self.fuse is not None and self.fuse.poll() is None and mounted(self.fuse_dir):
            for key, value in self.read_stats().items():
                if isinstance(value, int) and not isinstance(value, bool) and key != "pending pages":
                    self.totals[key] += value

    def loop_uses_direct_io(self) -> bool:
        assert self.loop is not None
        return run("losetup", "-n", "-O", "DIO", self.loop).stdout.strip() == "1"

    def evidence(self) -> dict[str, Any]:
        """What ext4 on the loop device sends the FUSE server, shown on the live stack.

        A file is written and its pages written back to the device without a flush
        (sync_file_range): the writes reach the FUSE server and wait there, the stable image
        unchanged. Then fsync(2) of the file (ext4 commits its journal and flushes the device):
        FUSE_FSYNC arrives, and the stable image has the pages.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        probe = self.mount / ".powercut-probe"
        os.sync()
        before_image = hashlib.sha256(self.stable.read_bytes()).digest()
        before = self.read_stats()
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, os.urandom(16 * PAGE))
            if libc.sync_file_range(fd, 0, 0, 1 | 2 | 4) != 0:  # WAIT_BEFORE | WRITE | WAIT_AFTER
                raise OSError(ctypes.get_errno(), "sync_file_range")
            written = self.read_stats()
            unchanged = hashlib.sha256(self.stable.read_bytes()).digest() == before_image
            os.fsync(fd)
        finally:
            os.close(fd)
        synced = self.read_stats()
        changed = hashlib.sha256(self.stable.read_bytes()).digest() != before_image
        probe.unlink()
        os.sync()

        def sent(key: str, start: dict[str, Any], end: dict[str, Any]) -> int:
            return int(end.get(key, 0)) - int(start.get(key, 0))

        return {
            "writes that reached the FUSE server on write-back": sent("write", before, written),
            "pages waiting there": written["pending pages"],
            "stable image unchanged by them": unchanged,
            "FUSE_FSYNC sent by fsync(2)": sent("fsync", written, synced),
            "FUSE_FSYNC with datasync set": sent("fdatasync", before, synced),
            "FUSE_FLUSH of the disk": sent("flush (close) of disk", before, synced),
            "pages waiting after fsync(2)": synced["pending pages"],
            "stable image changed by fsync(2)": changed,
        }


def users_of(folder: Path) -> list[int]:
    """The processes (other than this one) with a file or their working folder under `folder`."""
    inside = os.path.realpath(folder) + "/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(f"{entry.path}/cwd")]
            # closed even when the process ends mid-listing (readlink of a gone fd raises)
            with os.scandir(f"{entry.path}/fd") as fds:
                links += [os.readlink(fd.path) for fd in fds]
        except OSError:
            continue
        if any((link + "/").startswith(inside) for link in links):
            found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    """Wait until `pid` is no more (reaped by its parent, or a zombie of a dead one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise RuntimeError(f"process {pid} did not die in {timeout} s")


def missing_tools() -> list[str]:
    """What this machine lacks for a power-cut test (empty: it can run one)."""
    missing = [tool for tool in ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount") if shutil.which(tool) is None]
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    if not os.path.exists("/dev/loop-control"):
        missing.append("/dev/loop-control")
    try:
        import mfusepy  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: libfuse3 itself is missing
        missing.append(f"mfusepy with libfuse3 ({exc})")
    return missing


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
