"""Record every outbound socket connection and name lookup of this process.

Installed as a Python audit hook (it cannot be removed, and it sees every
thread), it appends one JSON line per event to the file named by
BLK_NETGUARD_LOG. Tests read the file and fail on any address outside loopback.
Used for the app in a child process (`run_app_guarded`) and in the test process.
"""

import json
import os
import socket
import sys

_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto")


def _address_of(event, args):
    if event == "socket.connect":
        sock, address = args
        if sock.family == getattr(socket, "AF_UNIX", None):
            return None  # a local socket file, never the network
        return address[0] if isinstance(address, tuple) else address
    if event == "socket.sendto":
        address = args[1]
        return address[0] if isinstance(address, tuple) else None
    return args[0]  # getaddrinfo(host, ...), gethostbyname(host)


def install(log_path: str) -> None:
    def hook(event, args):
        if event not in _EVENTS:
            return
        host = _address_of(event, args)
        if host is None:
            return
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": event, "host": str(host)}) + "\n")

    sys.addaudithook(hook)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "", "None"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def outside_loopback(log_path: str) -> list[dict]:
    try:
        lines = open(log_path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        return []
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if not is_loopback(e["host"])]


if __name__ == "__main__":
    # python tests/support/netguard.py LOG app.py [args…]: run a script under the guard.
    import runpy

    install(sys.argv[1])
    script = sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
