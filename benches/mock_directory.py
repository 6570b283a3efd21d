#!/usr/bin/env python3
"""A minimal routing directory node, only to check `peer_load --mode route`
before a real routing hub is at hand. Loopback only, no limits, no heartbeat.

Handshake (793 -> 795 accepted), PUBMSG (687) to every other handshaked peer,
PRIVMSG (685) to the peer named `<to>`, then, if the sender is a maker, a
location hint (789 `<from>;<location>;F:peerlist_features+ping`) to the target;
PING (798) -> PONG (799). Lines are forwarded byte for byte in ng's envelope.

    python3 benches/mock_directory.py [--port 0]   # prints "listening on 127.0.0.1:PORT"
"""

import argparse
import asyncio
import json

peers = {}  # nick -> (writer, location)


async def serve(reader, writer):
    nick = None
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                return
            msg = json.loads(raw)
            kind, line = msg["type"], msg["line"]
            if kind == 793:
                hs = json.loads(line)
                nick = hs["nick"]
                peers[nick] = (writer, hs["location-string"])
                reply = {"app-name": "joinmarket", "directory": True, "proto-ver-min": 5, "proto-ver-max": 5,
                         "features": {"peerlist_features": True, "ping": True}, "accepted": True,
                         "nick": "J5MockDirOOOOOOO", "network": hs["network"]}
                writer.write(json.dumps({"type": 795, "line": json.dumps(reply)}).encode() + b"\r\n")
            elif nick is None:
                return
            elif kind == 687:
                out = json.dumps({"type": 687, "line": line}).encode() + b"\r\n"
                for other, (w, _) in list(peers.items()):
                    if other != nick:
                        w.write(out)
            elif kind == 685:
                to = line.split("!")[1]
                if to in peers:
                    w, _ = peers[to]
                    w.write(json.dumps({"type": 685, "line": line}).encode() + b"\r\n")
                    loc = peers[nick][1]
                    if loc.endswith(".onion:5222"):
                        hint = f"{nick};{loc};F:peerlist_features+ping"
                        w.write(json.dumps({"type": 789, "line": hint}).encode() + b"\r\n")
            elif kind == 798:
                writer.write(b'{"type": 799, "line": ""}\r\n')
            await writer.drain()
    finally:
        if nick is not None and peers.get(nick, (None,))[0] is writer:
            del peers[nick]
        writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    server = await asyncio.start_server(serve, "127.0.0.1", a.port, limit=1 << 20)
    print("listening on 127.0.0.1:%d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await asyncio.sleep(600)  # bounded: a check, not a service


if __name__ == "__main__":
    asyncio.run(main())
