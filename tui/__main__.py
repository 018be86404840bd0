import sys

from tui.launcher import main

if __name__ == "__main__":
    sys.exit(main())
