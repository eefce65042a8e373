"""What the client checks share: failing with a message, and waiting (bounded) for a server still loading."""
import sys, time, urllib.request


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def wait_for_health(root, seconds=300):
    """Polls ROOT/health until it answers 200, failing after `seconds`."""
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(root + "/health", timeout=10) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        if time.time() > deadline:
            fail(f"{root}/health did not answer 200 within {seconds} s")
        time.sleep(0.5)
