"""`python -m geodiff ...`: the CLI of the interpreter that runs it (the rule's env)."""

from geodiff.cli import main

if __name__ == "__main__":
    main()
