// One hop of a service chain over cleartext HTTP/2 (h2c, prior knowledge) for tracewire's tests,
// in Node.js (uninstrumented, one event loop, the core http2 module).
// A request for /hop/<id> (plain HTTP/2, e.g. curl --http2-prior-knowledge) calls the next hop
// with a gRPC-shaped call (POST /hop.Hop/Call, application/grpc, the id as its message) on one
// HTTP/2 session kept open, then answers "ok <id>". A gRPC call is answered with a message and
// trailers: grpc-status 14 (UNAVAILABLE) when its id contains "fail", else 0.
// Prints "port N" once listening. Usage: node h2hop.js HOST PORT [NEXT_URL]
// HOP_TLS_CERT/HOP_TLS_KEY: serve HTTP/2 over TLS (ALPN h2); HOP_TLS_CA: trust that certificate
// when calling an https:// next hop.
const fs = require('fs');
const http2 = require('http2');
const [host, port, next] = process.argv.slice(2);
const env = process.env;

let session = null;
function nextSession() {
  if (!session || session.closed || session.destroyed) {
    session = http2.connect(next, env.HOP_TLS_CA ? { ca: fs.readFileSync(env.HOP_TLS_CA) } : {});
    session.on('error', () => {
      session = null;
    });
  }
  return session;
}

// A gRPC message: uncompressed flag, 4-byte length, the bytes.
function grpcMessage(text) {
  const body = Buffer.from(text);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(body.length, 1);
  return Buffer.concat([prefix, body]);
}

function call(rid, done) {
  const req = nextSession().request({
    ':method': 'POST',
    ':path': '/hop.Hop/Call',
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  let status = null;
  req.on('trailers', (t) => {
    status = t['grpc-status'];
  });
  req.on('response', (h) => {
    if (h['grpc-status'] !== undefined) status = h['grpc-status'];
  });
  req.on('data', () => {});
  req.on('end', () => done(status === '0'));
  req.on('error', () => done(false));
  req.end(grpcMessage(rid));
}

const server = env.HOP_TLS_CERT
  ? http2.createSecureServer({ cert: fs.readFileSync(env.HOP_TLS_CERT), key: fs.readFileSync(env.HOP_TLS_KEY) })
  : http2.createServer();
server.on('stream', (stream, headers) => {
  const grpc = (headers['content-type'] || '').startsWith('application/grpc');
  const chunks = [];
  stream.on('data', (c) => chunks.push(c));
  stream.on('end', () => {
    if (grpc) {
      const rid = Buffer.concat(chunks).subarray(5).toString();
      const failed = rid.includes('fail');
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': failed ? '14' : '0' }));
      stream.end(grpcMessage(`ok ${rid}`));
      return;
    }
    const rid = headers[':path'].split('/').pop();
    const answer = (status) => {
      stream.respond({ ':status': status, 'content-type': 'text/plain' });
      stream.end(`ok ${rid}\n`);
    };
    if (!next) return answer(200);
    call(rid, (ok) => answer(ok ? 200 : 502));
  });
});
server.listen(Number(port), host, () => console.log(`port ${server.address().port}`));
