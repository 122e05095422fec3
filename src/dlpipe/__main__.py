"""`python -m dlpipe` runs the CLI. A process of a torchrun job leaves through `exiting.exit_now`
(no C++ teardown at exit: see that module)."""

import os

from dlpipe.cli import main

if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from dlpipe.exiting import run_and_exit

        run_and_exit(main)
    else:
        main()
