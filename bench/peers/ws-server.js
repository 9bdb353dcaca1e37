// A minimal plain-`ws` chat relay on one node, the floor `bench/compare.sh` measures our gateway
// against: `{"t":"join","room","user"}` joins a room (answered `{"t":"joined"}`),
// `{"t":"post","room","content","n"}` posts, and every member of the room, the poster included,
// gets `{"t":"msg","room","user","content","n"}` (serialized once per post). No storage, no
// sequence numbers, no acks: the least a chat relay can do.
//
//   PORT=3003 node ws-server.js
//
// Listens on 127.0.0.1 only; prints "ready" on stdout once it accepts connections.
'use strict';

const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT);
if (!port) throw new Error('PORT is required');
const rooms = new Map(); // room id -> Set of sockets
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });

wss.on('connection', (ws) => {
  const joined = new Set();
  let user = null;
  ws.on('message', (data) => {
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return;
    }
    if (!m || typeof m.room !== 'string') return;
    if (m.t === 'join') {
      user = String(m.user);
      let members = rooms.get(m.room);
      if (!members) rooms.set(m.room, (members = new Set()));
      members.add(ws);
      joined.add(m.room);
      ws.send(JSON.stringify({ t: 'joined', room: m.room }));
    } else if (m.t === 'post' && joined.has(m.room)) {
      const frame = JSON.stringify({ t: 'msg', room: m.room, user, content: m.content, n: m.n });
      for (const peer of rooms.get(m.room)) {
        if (peer.readyState === 1) peer.send(frame);
      }
    }
  });
  ws.on('close', () => {
    for (const room of joined) {
      const members = rooms.get(room);
      members.delete(ws);
      if (members.size === 0) rooms.delete(room);
    }
  });
});
wss.on('listening', () => console.log('ready'));
const stop = () => wss.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
