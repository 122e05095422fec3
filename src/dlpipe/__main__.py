"""`python -m dlpipe` runs the CLI. A process of a torchrun job leaves through `exiting.exit_now`
(no C++ teardown at exit: see that module)."""

from dlpipe.cli import main
from dlpipe.distributed import env_world_size

if __name__ == "__main__":
    if env_world_size() > 1:
        from dlpipe.exiting import run_and_exit

        run_and_exit(main)
    else:
        main()
