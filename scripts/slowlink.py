#!/usr/bin/env python3
"""Adds a fixed one-way delay to TCP connections: listens on LISTEN and forwards
to TARGET, holding every chunk DELAY_MS milliseconds in each direction (chunks are
pipelined, not serialized, so it is a propagation delay, not a rate limit).

This kernel has no sch_netem, so scripts/bench-pull shapes the rate with tbf on a
veth pair and adds the delay here.

    slowlink.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS
"""
import asyncio
import sys
import time


async def pump(reader, writer, delay):
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                writer.write_eof() if writer.can_write_eof() else writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.monotonic() + delay, data or None))
            if not data:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    listen, target, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    lh, lp = listen.rsplit(":", 1)
    th, tp = target.rsplit(":", 1)
    delay = delay_ms / 1000

    async def handle(cr, cw):
        try:
            sr, sw = await asyncio.open_connection(th, int(tp))
        except OSError:
            cw.close()
            return
        await asyncio.gather(pump(cr, sw, delay), pump(sr, cw, delay), return_exceptions=True)

    server = await asyncio.start_server(handle, lh, int(lp))
    print(f"slowlink {listen} -> {target}, {delay_ms} ms each way", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
