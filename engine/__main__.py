import sys

from engine.cli import main

# Guarded: prep's process pool starts fresh interpreters that import this module again.
if __name__ == "__main__":
    sys.exit(main())
