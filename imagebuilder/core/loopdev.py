"""Loop devices that clear themselves: attached with LO_FLAGS_AUTOCLEAR in one step, held by an open file.

The device is set up by the kernel's LOOP_CONFIGURE (or, before Linux 5.8, LOOP_SET_FD and
LOOP_SET_STATUS64) with the autoclear flag, and this process keeps it open. It goes away at its last close:
when the block ends, or when the process is killed, or when the mount made on it is unmounted, whichever
is last. No `losetup --detach` is needed, and nothing can forget it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4


class LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


def attach(image: Path, offset: int = 0, size: int = 0, read_only: bool = False) -> tuple[Path, int]:
    """Attach `image` (bytes offset..offset+size; size 0: to its end) to a free loop device set to clear
    itself. Returns the device and an open descriptor of it: closing that lets the device go."""
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    backing = os.open(image, os.O_RDONLY if read_only else os.O_RDWR)
    try:
        for _ in range(10):  # another process may take the free device first
            control = os.open("/dev/loop-control", os.O_RDWR)
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            finally:
                os.close(control)
            device = Path(f"/dev/loop{number}")
            fd = os.open(device, os.O_RDONLY if read_only else os.O_RDWR)
            try:
                _configure(fd, backing, offset, size, flags, str(image))
            except OSError as e:
                os.close(fd)
                if e.errno == errno.EBUSY:
                    continue
                raise ImageBuilderError(f"cannot attach {image} to {device}: {e.strerror}",
                                        "check that loop devices are available (modprobe loop)") from None
            return device, fd
    finally:
        os.close(backing)
    raise ImageBuilderError(f"no free loop device for {image}", "detach unused ones: losetup -D")


def _configure(fd: int, backing: int, offset: int, size: int, flags: int, name: str) -> None:
    info = LoopInfo64(lo_offset=offset, lo_sizelimit=size, lo_flags=flags)
    raw = name.encode()[:63]
    ctypes.memmove(info.lo_file_name, raw, len(raw))
    config = LoopConfig(fd=backing, block_size=0, info=info)
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, config)
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    # Before Linux 5.8: two steps (a kill in between leaves a device whose autoclear is not set yet).
    fcntl.ioctl(fd, LOOP_SET_FD, backing)
    try:
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        raise
