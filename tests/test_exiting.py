"""A torchrun process leaves through `exiting.exit_now`: atexit handlers still run (the process
group is left, cache fills stop, temporary files go), output is flushed, and the exit code is the
command's, with no interpreter teardown after it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        """
        import atexit, sys
        from dlpipe.exiting import run_and_exit
        atexit.register(lambda: print("atexit ran", flush=False))
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_commands_exit_code_is_kept_and_atexit_handlers_run() -> None:
    proc = _run("""
        def main():
            sys.stdout.write("unflushed output")
            sys.exit(3)
        run_and_exit(main)
        """)
    assert proc.returncode == 3
    assert proc.stdout == "unflushed outputatexit ran\n"


def test_a_normal_return_is_exit_0_and_ctrl_c_is_130() -> None:
    assert _run("run_and_exit(lambda: None)").returncode == 0
    proc = _run("""
        def main():
            raise KeyboardInterrupt
        run_and_exit(main)
        """)
    assert proc.returncode == 130 and "atexit ran" in proc.stdout
