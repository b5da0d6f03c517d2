"""Run inside the compose network by compose-test.sh: hs1 answers, and every HOST:PORT
given on the command line is unreachable (exit 1 if any is reached)."""

import socket
import sys
import urllib.request


def reaches(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


urllib.request.urlopen("http://hs1:8008/health", timeout=5).read()
reached = [target for target in sys.argv[1:] if reaches(target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1]))]
if reached:
    print(f"egress probe: reached {', '.join(reached)} from the compose network")
    sys.exit(1)
print(f"egress probe: hs1 answers; {len(sys.argv) - 1} outside addresses unreachable")
