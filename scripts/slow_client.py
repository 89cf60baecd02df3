#!/usr/bin/env python3
"""Slow-client (slowloris) check against a running dalleserver: `slow_client.py HOST:PORT`.

Opens --slow connections that each send a request's headers one byte every --interval
seconds, and meanwhile a fast client sends `GET /livez` on a new connection every
--fast-interval seconds. The server must close every slow connection after its 10 s header
limit while the fast requests keep answering quickly. Everything stops by --max-seconds
(default 20). Standard library only; talks to loopback addresses only.

Exit status 0 when every slow connection was closed between --expect-min and --expect-max
seconds and every fast request succeeded under --max-latency-ms; 1 otherwise.
"""

import argparse
import http.client
import ipaddress
import select
import socket
import statistics
import sys
import threading
import time

# Long enough never to finish within the run: the server must be the one to give up.
HEADERS = b"GET /livez HTTP/1.1\r\nHost: slow\r\nUser-Agent: slowloris-check\r\nX-Padding: " + b"x" * 200


def slow_connection(addr, interval, deadline, result):
    """Sends HEADERS one byte at a time; records when (and how) the server closed it."""
    start = time.monotonic()
    result.update(sent=0, closed_after=None, how="still open at the deadline", answer=b"")
    try:
        sock = socket.create_connection(addr, timeout=5)
    except OSError as e:
        result["how"] = f"connect failed: {e}"
        return
    with sock:
        for byte in HEADERS:
            if time.monotonic() >= deadline:
                return
            try:
                sock.sendall(bytes([byte]))
                result["sent"] += 1
            except OSError as e:  # reset or broken pipe: the server closed it
                result.update(closed_after=time.monotonic() - start, how=f"send failed ({e.strerror})")
                return
            # Wait out the interval, watching for the server closing the connection.
            until = time.monotonic() + interval
            while (left := until - time.monotonic()) > 0:
                readable, _, _ = select.select([sock], [], [], left)
                if not readable:
                    continue
                try:
                    data = sock.recv(4096)
                except OSError as e:
                    result.update(closed_after=time.monotonic() - start, how=f"reset ({e.strerror})")
                    return
                if not data:
                    result.update(closed_after=time.monotonic() - start, how="closed by the server (EOF)")
                    return
                result["answer"] += data


def fast_client(addr, interval, stop, latencies, errors):
    """`GET /livez` on a fresh connection every `interval` seconds until `stop` is set."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection(addr[0], addr[1], timeout=5)
            conn.request("GET", "/livez")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status != 200:
                errors.append(f"status {response.status}")
            else:
                latencies.append((time.monotonic() - t0) * 1000)
        except OSError as e:
            errors.append(str(e))
        stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", help="HOST:PORT of the server (loopback only)")
    parser.add_argument("--slow", type=int, default=1, help="slow connections (default 1)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between header bytes")
    parser.add_argument("--fast-interval", type=float, default=0.05, help="seconds between fast requests")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="hard bound on the run")
    parser.add_argument("--expect-min", type=float, default=9.0)
    parser.add_argument("--expect-max", type=float, default=12.0)
    parser.add_argument("--max-latency-ms", type=float, default=250.0)
    args = parser.parse_args()

    host, _, port = args.address.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to test {host}: loopback addresses only")
    addr = (host, int(port))
    args.max_seconds = min(args.max_seconds, 20.0)
    deadline = time.monotonic() + args.max_seconds

    results = [{} for _ in range(args.slow)]
    slow = [threading.Thread(target=slow_connection, args=(addr, args.interval, deadline, r)) for r in results]
    stop = threading.Event()
    latencies, errors = [], []
    fast = threading.Thread(target=fast_client, args=(addr, args.fast_interval, stop, latencies, errors))
    started = time.monotonic()
    fast.start()
    for t in slow:
        t.start()
    for t in slow:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    # Keep measuring a moment after the slow connections are gone.
    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    stop.set()
    fast.join(6)
    elapsed = time.monotonic() - started

    ok = True
    closed = [r["closed_after"] for r in results if r.get("closed_after") is not None]
    print(f"slow connections: {args.slow}, one header byte every {args.interval}s")
    for i, r in enumerate(results[:5]):
        after = f"{r['closed_after']:.2f}s" if r.get("closed_after") is not None else "-"
        print(f"  #{i}: {r.get('sent', 0)} bytes sent, {r.get('how')} after {after}"
              + (f", answer {r['answer'][:60]!r}" if r.get("answer") else ""))
    if args.slow > 5:
        print(f"  … and {args.slow - 5} more")
    if len(closed) != args.slow:
        print(f"FAIL: {args.slow - len(closed)} slow connection(s) were not closed by the server")
        ok = False
    if closed:
        print(f"  closed after: min {min(closed):.2f}s, max {max(closed):.2f}s")
        if min(closed) < args.expect_min or max(closed) > args.expect_max:
            print(f"FAIL: expected every close between {args.expect_min}s and {args.expect_max}s")
            ok = False
    print(f"fast client: {len(latencies)} requests on new connections in {elapsed:.1f}s, {len(errors)} errors")
    if latencies:
        print("  latency ms: p50 {:.2f}, p95 {:.2f}, p99 {:.2f}, max {:.2f}, mean {:.2f}".format(
            percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99),
            max(latencies), statistics.fmean(latencies)))
        if max(latencies) > args.max_latency_ms:
            print(f"FAIL: a fast request took more than {args.max_latency_ms} ms")
            ok = False
    else:
        print("FAIL: no fast request succeeded")
        ok = False
    if errors:
        print(f"FAIL: fast request errors, e.g. {errors[:3]}")
        ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
