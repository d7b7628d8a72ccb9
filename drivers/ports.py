"""The serial ports of this PC, and which processes hold one open.

What a technician needs to pick the ``port`` of a new meter (``paystation-agent ports``),
and what turns a busy port into a reason a person can act on ("held open by screen, pid
812") in the driver's log and health, and in ``tap``.

* The listing is pyserial's (``serial.tools.list_ports``: sysfs on Linux), with the stable
  ``/dev/serial/by-id/…`` names that udev makes for USB adapters, which survive a replug
  into another socket where ``/dev/ttyUSB0`` may become ``ttyUSB1``.
* "Held open" is found the way ``fuser`` finds it: every ``/proc/PID/fd/*`` that is the
  same character device. Only processes this user may inspect are seen (all of them as
  root); the others are counted, so "nothing holds it" is never said when it is not known.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serial.tools import list_ports, list_ports_linux

BY_ID = Path("/dev/serial/by-id")
PROC = Path("/proc")
# errors of an open that another process causes: pyserial's flock (exclusive=True) fails
# with EAGAIN/EWOULDBLOCK; a tty another process put in exclusive mode (TIOCEXCL) with EBUSY
BUSY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY})


@dataclass(frozen=True)
class Holder:
    """A process that has the port open."""

    pid: int
    name: str

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"


@dataclass(frozen=True)
class Holders:
    """Who has a device open, as far as this user can see."""

    seen: tuple[Holder, ...]  # in pid order
    unreadable: int  # processes whose open files this user may not look at

    def describe(self) -> str:
        """``screen (pid 812)``, or what is known when none is seen."""
        if self.seen:
            return ", ".join(map(str, self.seen))
        if self.unreadable:
            return f"no process this user can see ({self.unreadable} hidden from it)"
        return "no process"


@dataclass(frozen=True)
class SerialPort:
    """One serial port of this PC, as pyserial and udev describe it."""

    device: str
    by_id: tuple[str, ...]
    description: str
    manufacturer: str | None
    usb: str | None  # "0403:6001" (vendor:product), for a USB adapter
    serial_number: str | None
    holders: Holders


def serial_ports(
    extra: Iterable[str] = (), *, by_id: Path = BY_ID, proc: Path = PROC
) -> list[SerialPort]:
    """The ports pyserial finds, then each of ``extra`` (configured ports, which may be a
    symlink, a pty or not plugged in) that is a device not listed already."""
    infos = list(list_ports.comports())
    known = {os.path.realpath(i.device) for i in infos}
    for path in extra:
        real = os.path.realpath(path)
        if real not in known and _is_char_device(real):
            infos.append(list_ports_linux.SysFS(real))
            known.add(real)
    names = _stable_names(by_id)
    ports = []
    for info in sorted(infos, key=lambda i: i.device):
        real = os.path.realpath(info.device)
        usb = f"{info.vid:04x}:{info.pid:04x}" if info.vid is not None else None
        description = info.product or (info.description if info.description != "n/a" else "")
        ports.append(
            SerialPort(
                device=info.device,
                by_id=tuple(names.get(real, ())),
                description=description or "",
                manufacturer=info.manufacturer,
                usb=usb,
                serial_number=info.serial_number,
                holders=holders(info.device, proc=proc),
            )
        )
    return ports


def holders(device: str, *, proc: Path = PROC, exclude: Sequence[int] = ()) -> Holders:
    """The processes that have ``device`` (a path to a character device) open, but those
    in ``exclude``. A path that is not a character device has none."""
    try:
        target = os.stat(device)
    except OSError:
        return Holders((), 0)
    if not stat.S_ISCHR(target.st_mode):
        return Holders((), 0)
    seen: list[Holder] = []
    unreadable = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except PermissionError:
            unreadable += 1
            continue
        except OSError:  # the process ended meanwhile
            continue
        if any(_same_device(fd, target.st_rdev) for fd in fds):
            seen.append(Holder(int(entry.name), _process_name(entry)))
    return Holders(tuple(sorted(seen, key=lambda holder: holder.pid)), unreadable)


def busy_reason(device: str, exc: BaseException) -> str | None:
    """Why an open failed, when another reader is the cause, naming who has the port open.
    None for any other failure (no such device, permission)."""
    if getattr(exc, "errno", None) not in BUSY_ERRNOS:
        return None
    return (
        f"busy: {device} is locked by another reader (open in {holders(device).describe()}); "
        "two readers would split the frames between them"
    )


def _stable_names(by_id: Path) -> dict[str, list[str]]:
    """device -> its /dev/serial/by-id names."""
    names: dict[str, list[str]] = {}
    try:
        links = sorted(by_id.iterdir())
    except OSError:
        return names
    for link in links:
        names.setdefault(os.path.realpath(link), []).append(str(link))
    return names


def _same_device(fd: Path, rdev: int) -> bool:
    try:
        st = os.stat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _process_name(entry: Path) -> str:
    try:
        return (entry / "comm").read_text().strip() or f"pid {entry.name}"
    except OSError:
        return "?"
