"""Callback senders are named by pid and start time, so a dead sender never passes for alive when its pid returns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from babychain.engine.callbacks import process_name, sender_identity


def test_a_sender_is_named_by_host_pid_and_start_time() -> None:
    name = process_name(os.getpid())
    assert name is not None
    pid, started = name.split("@")
    assert pid == str(os.getpid()) and int(started) > 0
    assert sender_identity() == f"{socket.gethostname()}/{name}"
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        later = process_name(child.pid)
        assert later is not None and int(later.split("@")[1]) >= int(started)
    finally:
        child.communicate(b"")


def test_a_zombie_or_a_process_that_is_gone_has_no_name() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has exited and is not reaped yet: a zombie
    assert process_name(child.pid) is None
    child.wait()
    assert process_name(child.pid) is None
    assert process_name(2**22 + 1) is None  # above any pid the kernel hands out
