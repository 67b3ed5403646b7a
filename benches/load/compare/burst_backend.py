#!/usr/bin/env python3
"""A backend of fixed capacity for the burst scenarios of compare_all.sh.

WORKERS workers each take SERVICE_MS per request (asyncio.sleep, so no CPU
is spent and the capacity is exact on a busy machine): capacity is
WORKERS * 1000 / SERVICE_MS requests/s. Every connection is accepted and
read at once; a request that finds every worker busy waits, in arrival
order, as it would in a thread-per-request server's accept queue.

One line per request is written to LOG when its answer has been sent:
    id arrival start end
(epoch seconds; id is the X-Bench-Id header, "-" when absent), so the load
the backend saw over time can be plotted and matched to what clients saw.
HTTP/1.1 keep-alive is supported; SIGTERM stops it.
"""
import argparse
import asyncio
import signal
import time


async def serve(args):
    sem = asyncio.Semaphore(args.workers)
    log = open(args.log, "a", buffering=1)
    service = args.service_ms / 1000.0

    async def handle(reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                arrival = time.time()
                lines = head.decode("latin-1").split("\r\n")
                version = lines[0].rsplit(" ", 1)[-1]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                elif "chunked" in headers.get("transfer-encoding", "").lower():
                    while True:
                        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                async with sem:
                    start = time.time()
                    await asyncio.sleep(service)
                    end = time.time()
                try:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                        + (b"Connection: close\r\n" if close else b"")
                        + b"\r\nok\n"
                    )
                    await writer.drain()
                finally:
                    log.write(f"{headers.get('x-bench-id', '-')} {arrival:.6f} {start:.6f} {end:.6f}\n")
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    log.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--service-ms", type=float, default=100.0)
    p.add_argument("--log", required=True)
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
