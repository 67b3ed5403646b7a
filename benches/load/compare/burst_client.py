#!/usr/bin/env python3
"""A bounded burst of writes for compare_all.sh's burst scenarios.

N POSTs (a small JSON body, header X-Bench-Id: 1..N) from CONCURRENCY
clients, each a keep-alive HTTP/1.1 connection that sends its next request
when the previous one is answered (a new connection after an error or a
`Connection: close`). No retries: a client that got no answer waits
PAUSE_AFTER_ERROR seconds and goes on with its next request. Each request gives up after TIMEOUT
seconds. Writes one line per request to OUT:
    id sent answered status
(epoch seconds; status is the HTTP status, or err:KIND when no answer
came: refused, reset, timeout, ...), and a first line `# t0 EPOCH`.
"""
import argparse
import asyncio
import time


class NoAnswer(Exception):
    pass


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    close = headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()
        close = True
    return status, close


async def run(args):
    host, port = args.target.split(":")
    ids = iter(range(1, args.n + 1))
    out = []
    t0 = time.time()
    if args.started:
        with open(args.started, "w") as f:
            f.write(f"{t0:.6f}\n")

    async def client():
        conn = None
        for i in ids:
            body = f'{{"order":{i},"pad":"{"x" * 64}"}}'.encode()
            req = (
                f"POST {args.path} HTTP/1.1\r\nHost: {args.target}\r\n"
                f"Content-Type: application/json\r\nX-Bench-Id: {i}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            sent = time.time()
            status = None
            try:
                async with asyncio.timeout(args.timeout):
                    if conn is None:
                        conn = await asyncio.open_connection(host, int(port))
                    conn[1].write(req)
                    await conn[1].drain()
                    status, close = await read_response(conn[0])
                if close:
                    conn[1].close()
                    conn = None
            except TimeoutError:
                status = "err:timeout"
            except ConnectionRefusedError:
                status = "err:refused"
            except ConnectionResetError:
                status = "err:reset"
            except (asyncio.IncompleteReadError, BrokenPipeError):
                status = "err:closed"
            except OSError as e:
                status = f"err:{type(e).__name__}"
            out.append(f"{i} {sent:.6f} {time.time():.6f} {status}\n")
            if not isinstance(status, int):
                if conn is not None:
                    conn[1].close()
                    conn = None
                await asyncio.sleep(args.pause_after_error)
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    with open(args.out, "w") as f:
        f.write(f"# t0 {t0:.6f}\n")
        f.writelines(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="127.0.0.1:PORT")
    p.add_argument("--path", default="/orders")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("-c", "--concurrency", type=int, default=256)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--pause-after-error", type=float, default=0.5)
    p.add_argument("--out", required=True)
    p.add_argument("--started", help="a file to write the start time to, once the burst begins")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
