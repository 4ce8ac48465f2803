"""Resident memory of a process tree, read from /proc (Linux): the one sampler the memory benchmarks share.

A command's peak memory is its whole tree's (export and the demo start child processes), and `ru_maxrss` only
sees one process at a time, so the scripts sample the tree instead.
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")


def children() -> dict[int, list[int]]:
    """parent pid -> its children's pids, for every process now running."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants now running."""
    tree, pids, stack = children(), [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack.extend(tree.get(pid, ()))
    return pids


def rss(pid: int) -> int:
    """Resident bytes of one process (0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss(root: int) -> tuple[int, int]:
    """(RSS of root and all its descendants, RSS of root alone), bytes."""
    return sum(rss(pid) for pid in tree_pids(root)), rss(root)
