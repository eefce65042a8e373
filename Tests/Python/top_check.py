"""`conclave top` in a real terminal: a private tmux server (-L) runs it, `capture-pane` reads the screen until
the three workers show ready with the heat map, `send-keys q` quits, and the exit status must be 0.
Prints one JSON line: {"screen": …, "exit": …}; exits 1 with the reason on stderr when a bound passes.
With SCREENSHOT, the captured screen (plain text: top draws no colours) is also drawn as a terminal in headless
Chromium and saved there as a PNG, for people to look at.
Usage: top_check.py CONCLAVE COORDINATOR WORKDIR [SCREENSHOT]
"""
import html
import json
import os
import subprocess
import sys
import time


def picture(screen, path):
    """The screen as a dark terminal, 8.4 px a column, in a PNG."""
    from selenium.webdriver.common.by import By

    from browser import chromium

    lines = screen.rstrip("\n").splitlines()
    page = os.path.join(os.path.dirname(path) or ".", "top-screen.html")
    with open(page, "w") as f:
        f.write("<!doctype html><meta charset=utf-8><body style='margin:0;background:#1e1e1e'>"
                "<pre id=t style='display:inline-block;margin:0;padding:10px 14px;font:14px/1.25 monospace;color:#e6e6e6;"
                "background:#1e1e1e'>" + html.escape("\n".join(l.rstrip() for l in lines)) + "</pre>")
    driver = chromium(1400, 900)
    try:
        driver.get("file://" + os.path.abspath(page))
        driver.find_element(By.ID, "t").screenshot(path)
    finally:
        driver.quit()


def main():
    conclave, coordinator, workdir = sys.argv[1:4]
    shot = sys.argv[4] if len(sys.argv) > 4 else None
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
        if shot:
            picture(screen, shot)
        print(json.dumps({"screen": screen, "exit": status}))
    finally:
        tmux("kill-server")


if __name__ == "__main__":
    main()
