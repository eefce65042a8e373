"""`conclave top` in a real terminal: a private tmux server (-L) runs it, `capture-pane` reads the screen until
the three workers show ready with the heat map, `send-keys q` quits, and the exit status must be 0.
Prints one JSON line: {"screen": …, "exit": …}; exits 1 with the reason on stderr when a bound passes.
Usage: top_check.py CONCLAVE COORDINATOR WORKDIR
"""
import json
import os
import subprocess
import sys
import time


def main():
    conclave, coordinator, workdir = sys.argv[1:4]
    sock = f"conclave-top-{os.getpid()}"
    exit_file = os.path.join(workdir, "top.exit")

    def tmux(*args):
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)

    command = f"{conclave} top --coordinator {coordinator} --interval 0.5; echo EXIT:$? > {exit_file}"
    try:
        r = tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "40", "sh", "-c", command)
        if r.returncode != 0:
            print(f"tmux new-session failed: {r.stderr}", file=sys.stderr)
            sys.exit(1)
        screen, t0 = "", time.monotonic()
        while time.monotonic() - t0 < 60:
            screen = tmux("capture-pane", "-p", "-t", "top").stdout
            rows = screen.splitlines()
            ready = all(any(l.startswith(n) and "ready" in l for l in rows) for n in ["local-1", "local-2", "local-3"])
            if ready and "L3 " in screen and "imb " in screen:
                break
            time.sleep(0.25)
        tmux("send-keys", "-t", "top", "q")
        status, t0 = "", time.monotonic()
        while time.monotonic() - t0 < 30 and not status:
            if os.path.exists(exit_file):
                status = open(exit_file).read().strip()
            time.sleep(0.1)
        print(json.dumps({"screen": screen, "exit": status}))
    finally:
        tmux("kill-server")


if __name__ == "__main__":
    main()
