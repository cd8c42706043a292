"""`python sweep.py`: the sweep (sweeps/cli.py); installed as `infer-sweep` too."""
from sweeps.cli import main

if __name__ == "__main__":
    main()
