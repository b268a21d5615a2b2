"""TCP sockets, file descriptors and memory of a process, read from Linux's ``/proc``.

Used by the pool tests (is a socket left in CLOSE_WAIT?) and by the soak benchmark (sockets by
state, open fds and RSS over time). Linux only; every function raises ``OSError`` elsewhere.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

# the kernel's numbering (include/net/tcp_states.h)
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}


@dataclass(frozen=True, slots=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str
    inode: int


def tcp_sockets() -> list[TcpSocket]:
    """Every TCP socket of this network namespace (IPv4 and IPv6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            out.append(
                TcpSocket(
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    TCP_STATES.get(int(state, 16), state),
                    int(inode),
                )
            )
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def fd_targets(pid: int) -> list[str]:
    """What each open descriptor of ``pid`` is (its ``/proc/PID/fd`` link target)."""
    out = []
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            out.append(os.readlink(f"{fd_dir}/{name}"))
        except OSError:
            continue  # closed meanwhile
    return out


def fds_by_kind(
    pid: int,
    backend_ports: Collection[int],
    listen_ports: Collection[int],
    sockets: list[TcpSocket] | None = None,
) -> Counter[str]:
    """Open descriptors of ``pid`` by kind: TCP sockets to a backend (remote port in
    ``backend_ports``), accepted client connections (local port in ``listen_ports``), listening
    sockets, other TCP sockets, other sockets (Unix, ...), files, pipes, epoll/eventfd/other
    anonymous inodes."""
    by_inode = {s.inode: s for s in (tcp_sockets() if sockets is None else sockets)}
    targets = fd_targets(pid)
    inodes = [int(t[8:-1]) for t in targets if t.startswith("socket:[")]
    if any(i not in by_inode for i in inodes):
        # a socket opened since ``sockets`` was read, or one the kernel's table skipped while
        # sockets came and went under a long read: read the table again once
        by_inode.update((s.inode, s) for s in tcp_sockets())
    kinds: Counter[str] = Counter()
    for target in targets:
        if target.startswith("socket:["):
            sock = by_inode.get(int(target[8:-1]))
            if sock is None:
                kinds["socket_other"] += 1  # Unix sockets, or TCP not found in either read
            elif sock.state == "LISTEN":
                kinds["listen"] += 1
            elif sock.remote_port in backend_ports:
                kinds["backend"] += 1
            elif sock.local_port in listen_ports:
                kinds["client"] += 1
            else:
                kinds["tcp_other"] += 1
        elif target.startswith("pipe:["):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target[11:].strip("[]")] += 1
        elif target.startswith("/"):
            kinds["file"] += 1
        else:
            kinds["other"] += 1
    return kinds


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS in /proc/{pid}/status")


def states_to(
    remote_ports: Collection[int],
    pid: int | None = None,
    sockets: list[TcpSocket] | None = None,
) -> Counter[str]:
    """States of the TCP sockets whose remote port is in ``remote_ports`` (of ``pid`` only, if
    given: sockets the process still holds; an orphan in TIME_WAIT belongs to nobody).
    ``sockets``: a :func:`tcp_sockets` list read once for several calls."""
    inodes = socket_inodes(pid) if pid is not None else None
    counts: Counter[str] = Counter()
    for sock in tcp_sockets() if sockets is None else sockets:
        if sock.remote_port in remote_ports and (inodes is None or sock.inode in inodes):
            counts[sock.state] += 1
    return counts
