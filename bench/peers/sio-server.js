// A minimal Socket.IO chat relay, the peer `bench/compare.sh` measures our gateway against: a
// client joins a room (`join`, acknowledged), posts to a room (`post`), and every member of the
// room, the poster included (as our gateway delivers a post to its sender too), gets the message.
// With REDIS_URL set, rooms span nodes through @socket.io/redis-adapter (one PUBLISH per post,
// every node subscribed), which is how Socket.IO is run as a cluster.
//
//   PORT=3001 [REDIS_URL=redis://127.0.0.1:6379] node sio-server.js
//
// Listens on 127.0.0.1 only; prints "ready" on stdout once it accepts connections.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

async function main() {
  const port = Number(process.env.PORT);
  if (!port) throw new Error('PORT is required');
  // WebSocket transport only: the load client never long-polls, and this skips the upgrade dance.
  const io = new Server({ serveClient: false, transports: ['websocket'] });
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on('connection', (socket) => {
    socket.on('join', (msg, ack) => {
      if (!msg || typeof msg.room !== 'string') return;
      socket.data.user = String(msg.user);
      socket.join(msg.room);
      if (typeof ack === 'function') ack({ ok: true });
    });
    socket.on('post', (msg) => {
      // Only members post, as on our gateway (`not_joined`).
      if (!msg || !socket.rooms.has(msg.room)) return;
      io.to(msg.room).emit('message', {
        room: msg.room,
        user: socket.data.user,
        content: msg.content,
        n: msg.n,
      });
    });
  });
  const server = http.createServer();
  io.attach(server);
  server.listen(port, '127.0.0.1', () => console.log('ready'));
  const stop = () => {
    io.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(`sio-server: ${e.stack || e}`);
  process.exit(1);
});
