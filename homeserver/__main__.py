import sys

from homeserver.cli import main

sys.exit(main())
