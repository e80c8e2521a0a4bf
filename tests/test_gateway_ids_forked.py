"""Response ids after a fork: a pre-forking server (gunicorn ``--preload``, or any
``os.fork`` after the app is imported) must not hand two workers one sequence of ids."""

from __future__ import annotations

import os

import pytest

from cascade.gateway import _access


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_worker_draws_response_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, to the parent
        try:
            os.write(write, format(_access._ids.getrandbits(128), "032x").encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    mine = format(_access._ids.getrandbits(128), "032x")
    assert len(child) == 32
    assert child != mine
