"""`python -m dlpipe` runs the CLI."""

from dlpipe.cli import main

if __name__ == "__main__":
    main()
