"""A stand-in for EVE's ESI, for the load test only: answers every GET after a delay.

    python3 diagnostics/esi_stub.py        listens on port 8080

GET /?ms=300&jitter=100 answers 200 with a small JSON body after 300 ms, give or take up to
100 ms (uniform). Standard library only (asyncio), so one process serves thousands of waiting
requests; nothing here ever leaves the machine.
"""

import asyncio
import json
import random
from urllib.parse import parse_qs, urlsplit

PORT = 8080


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # keep-alive: serve requests until the client closes
            request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b" ", 2)[1].decode()
            query = parse_qs(urlsplit(target).query)
            delay = float(query.get("ms", ["300"])[0]) + random.uniform(-1, 1) * float(query.get("jitter", ["0"])[0])
            await asyncio.sleep(max(delay, 0) / 1000)
            body = json.dumps({"delay_ms": round(delay, 1)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(answer, "0.0.0.0", PORT, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
