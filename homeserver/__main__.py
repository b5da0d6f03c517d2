import sys

from homeserver.cli import main

if __name__ == "__main__":  # helper processes import this module again (spawn)
    sys.exit(main())
