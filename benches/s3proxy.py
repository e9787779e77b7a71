#!/usr/bin/env python3
"""A TCP proxy that puts a real network between a client and a local S3 server.

(pgwal's copy of ../shared/bench/s3proxy.py, so that benches/ and the shared
harness put the same network between client and server.)

    s3proxy.py --listen 127.0.0.1:PORT --to 127.0.0.1:S3PORT [--delay-ms D]
               [--rate-mbit R] [--tls-cert CERT --tls-key KEY]

Every chunk is delivered D milliseconds after it was read, in each direction
(so a request/response round trip costs 2*D, a TLS handshake about 4*D), without
limiting how many bytes are in flight; --rate-mbit caps each direction of each
connection. With --tls-cert/--tls-key the proxy terminates TLS (clients that
insist on https, such as pgBackRest, can then talk to a plain-HTTP server).
Loopback only; runs until SIGTERM/SIGINT; prints 'ready PORT' once listening.
"""
import argparse
import asyncio
import signal
import ssl
import sys
import time


def parse_addr(s):
    host, _, port = s.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"s3proxy: refusing non-loopback address {s!r}")
    return host, int(port)


async def pump(reader, writer, delay, rate_bps):
    """Copy reader to writer, delivering each chunk `delay` seconds after it arrived."""
    queue = asyncio.Queue()

    async def deliver():
        sent_at = time.monotonic()
        while True:
            due, data = await queue.get()
            if data is None:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            if rate_bps:
                sent_at = max(sent_at, time.monotonic()) + len(data) / rate_bps
                pause = sent_at - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError, AttributeError):
            writer.close()

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await queue.put((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        pass
    await queue.put((time.monotonic() + delay, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def handle(client_r, client_w, target, delay, rate_bps):
    try:
        up_r, up_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump(client_r, up_w, delay, rate_bps), pump(up_r, client_w, delay, rate_bps),
                         return_exceptions=True)
    for w in (client_w, up_w):
        try:
            w.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--rate-mbit", type=float, default=0.0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    listen, target = parse_addr(a.listen), parse_addr(a.to)
    ctx = None
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    delay, rate = a.delay_ms / 1000.0, a.rate_mbit * 1e6 / 8
    server = await asyncio.start_server(lambda r, w: handle(r, w, target, delay, rate), *listen, ssl=ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {listen[1]}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
