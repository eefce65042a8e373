"""The dashboard in headless Chromium (Debian's chromium + chromium-driver, selenium from PyPI) against a running
`conclave serve --local 3`, while a client generates:

1. the page loads; the workers table shows three ready workers, the heat map has non-zero cells in every layer,
   tokens per second is above zero; with --serves-experts NAME, that worker's row shows the time a served expert
   call took; a screenshot goes to SCREENSHOT;
2. on a narrow screen (390×844, a phone) the page does not scroll sideways: it flows to one column and wide tables
   scroll inside their boxes; a screenshot goes to SCREENSHOT with -narrow;
3. with --kill PATTERN, the process matching it (a worker) gets SIGKILL; the page must show that worker down, and
   then a recovery event.

Prints one JSON line of what it measured; exits 1 (with the reason on stderr) when something is not shown within
its bound. Usage: dashboard_check.py BASE SCREENSHOT [--serves-experts NAME] [--kill PATTERN --worker NAME]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from selenium.webdriver.common.by import By

from browser import chromium


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


def generate(base, stop):
    """Streams completions one after another until `stop` is set (failures are the recovery's business)."""
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0.8, "ignore_eos": True}).encode()
    while not stop.is_set():
        try:
            req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=120).read()
        except Exception:
            time.sleep(0.2)


def wait(what, bound, check):
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        try:
            value = check()
            if value:
                return time.monotonic() - t0, value
        except Exception:
            pass
        time.sleep(0.1)
    fail(f"the page did not show {what} within {bound} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("screenshot")
    ap.add_argument("--kill")
    ap.add_argument("--worker")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--serves-experts")
    a = ap.parse_args()

    stop = threading.Event()
    client = threading.Thread(target=generate, args=(a.base, stop), daemon=True)
    client.start()

    driver = chromium(1280, 800)
    out = {}
    try:
        driver.get(a.base + "/")
        timing = driver.execute_script("const t = performance.getEntriesByType('navigation')[0]; return [t.domContentLoadedEventEnd, t.loadEventEnd];")
        out["load_ms"] = round(timing[1], 1)
        out["script_bytes"] = driver.execute_script("return [...document.scripts].reduce((a, s) => a + s.text.length, 0);")

        def ready_rows():
            rows = driver.find_elements(By.CSS_SELECTOR, "#workers tbody tr[data-worker]")
            states = [r.find_element(By.CSS_SELECTOR, "td.state").text for r in rows]
            return len(states) == a.workers and all(s == "ready" for s in states)
        out["ready_s"] = round(wait(f"{a.workers} ready workers", 120, ready_rows)[0], 2)

        def heat():
            cells = driver.find_elements(By.CSS_SELECTOR, "#heat rect")
            layers = {}
            for c in cells:
                layers.setdefault(c.get_attribute("data-layer"), 0)
                layers[c.get_attribute("data-layer")] += int(c.get_attribute("data-count"))
            return layers if layers and all(v > 0 for v in layers.values()) else None
        _, layers = wait("non-zero heat in every layer", 60, heat)
        out["heat_layers"] = len(layers)

        def tokps():
            t = driver.find_element(By.ID, "tokps").text
            return float(t) if t not in ("", "—") and float(t) > 0 else None
        _, out["tok_s"] = wait("tokens per second above zero", 60, tokps)
        if a.serves_experts:
            def served():
                cell = driver.find_element(By.CSS_SELECTOR, f'#workers tbody tr[data-worker="{a.serves_experts}"] td.expert-ms').text
                first = cell.split("/")[0].strip()
                return cell if first.endswith(" ms") and float(first[:-3]) > 0 else None
            # The window of the per-call figures is ten seconds; the first needs two snapshots.
            _, out["expert_ms"] = wait(f"{a.serves_experts}'s time per served expert call", 60, served)
        # At 1280×800 the workers table fits its box (no scrolling sideways to see a worker's figures).
        fits = driver.execute_script("const s = document.getElementById('workers').parentElement; return [s.scrollWidth, s.clientWidth];")
        out["workers_table"] = {"scroll_width": fits[0], "client_width": fits[1]}
        if fits[0] > fits[1] + 1:
            fail(f"at 1280×800 the workers table is wider than its box: {out['workers_table']}")
        driver.save_screenshot(a.screenshot)
        # The whole page at the same width, for the README (the window goes back to 1280×800 after).
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1280, height + 120)
        driver.save_screenshot(a.screenshot.replace(".png", "-full.png"))
        driver.set_window_size(390, 844)
        time.sleep(1.5)
        widths = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth, "
                                       "Math.max(...[...document.querySelectorAll('section')].map((s) => s.getBoundingClientRect().right))];")
        out["narrow"] = {"scroll_width": widths[0], "inner_width": widths[1], "sections_right": round(widths[2], 1)}
        driver.save_screenshot(a.screenshot.replace(".png", "-narrow.png"))
        if widths[0] > widths[1] + 1 or widths[2] > widths[1] + 1:
            fail(f"on a 390 px wide screen the page scrolls sideways: {out['narrow']}")
        driver.set_window_size(1280, 800)

        if a.kill:
            # Not this script, whose own command line carries the pattern.
            pids = [p for p in subprocess.run(["pgrep", "-f", a.kill], capture_output=True, text=True).stdout.split() if int(p) != os.getpid()]
            if len(pids) != 1:
                fail(f"expected one process matching {a.kill!r}, found {pids}")
            os.kill(int(pids[0]), signal.SIGKILL)

            def down():
                row = driver.find_element(By.CSS_SELECTOR, f'#workers tbody tr[data-worker="{a.worker}"] td.state')
                return row.text == "down"
            # The coordinator calls a worker down after 3 s of silence; the page polls each second.
            out["down_after_s"] = round(wait(f"{a.worker} down", 60, down)[0], 2)

            def recovery():
                items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#events li")]
                return [t for t in items if "recovery" in t]
            t, events = wait("a recovery event", 180, recovery)
            out["recovery_after_s"] = round(out["down_after_s"] + t, 2)
            out["recovery_event"] = events[0]
            driver.save_screenshot(a.screenshot.replace(".png", "-recovered.png"))
    finally:
        stop.set()
        driver.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
