"""A standard WebSocket client with permessage-deflate against a real gateway.

Python's `websockets` offers permessage-deflate by default (and compresses what it sends). Driven
by tests/tests/python_client.rs, which starts the gateway and a plain (uncompressed) client:

    python3 tests/python/deflate_client.py WS_URL ROOM USER

Protocol with the driver: after logging in and receiving its own posts back, the script prints
`READY` on a line of its own; the driver's plain client then posts to the room, and the script
waits for that message, asks for the room's history, prints one line `RESULT {json}` with what it
saw and exits 0. Any failure exits non-zero with the reason on stderr. The assertions are the
driver's; the script only reports.
"""

import asyncio
import json
import sys

try:
    from websockets.asyncio.client import connect
except ImportError as error:  # an old `websockets` (before 13) or none at all
    sys.exit(
        f"python `websockets` 13+ is needed ({error}); "
        "install it with `python3 -m pip install websockets`"
    )

TIMEOUT = 30


async def recv_json(ws):
    frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if not isinstance(frame, str):
        raise RuntimeError(f"expected a text frame, got {type(frame).__name__}")
    return json.loads(frame)


async def recv_until(ws, predicate, seen):
    """Frames until one matches `predicate`; every frame read is appended to `seen`."""
    while True:
        frame = await recv_json(ws)
        seen.append(frame)
        if frame.get("event") == "error":
            raise RuntimeError(f"the server answered with an error: {frame}")
        if predicate(frame):
            return frame


async def main(url, room, user):
    result = {}
    # The defaults: `compression="deflate"`, i.e. permessage-deflate is offered.
    async with connect(url, open_timeout=TIMEOUT) as ws:
        result["extensions"] = [ext.name for ext in ws.protocol.extensions]
        result["responseExtensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        seen = []
        await ws.send(json.dumps({"event": "login", "roomId": room, "userId": user, "userName": "Pÿthon 🐍"}))
        result["joined"] = await recv_until(ws, lambda f: f.get("event") == "joined", seen)

        posts = json.loads(sys.stdin.readline())
        own = []
        for i, content in enumerate(posts):
            msg_id = f"py-{i}"
            await ws.send(json.dumps({"event": "message", "roomId": room, "content": content, "clientMsgId": msg_id}))
            await recv_until(ws, lambda f: f.get("event") == "sent" and f.get("clientMsgId") == msg_id, seen)
            own.append(
                await recv_until(ws, lambda f: f.get("event") == "message" and f.get("clientMsgId") == msg_id, seen)
            )
        result["own"] = own

        print("READY", flush=True)
        result["other"] = await recv_until(
            ws, lambda f: f.get("event") == "message" and f.get("userId") != user, seen
        )
        await ws.send(json.dumps({"event": "history", "roomId": room, "limit": 50}))
        result["history"] = await recv_until(ws, lambda f: f.get("event") == "history", seen)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: deflate_client.py WS_URL ROOM USER  (posts as a JSON list on stdin)")
    asyncio.run(main(*sys.argv[1:]))
