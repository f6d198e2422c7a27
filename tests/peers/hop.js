// One hop of a service chain for tracewire's tests in Node.js (uninstrumented, one event loop).
// GET /hop/<id> calls GET <next>/hop/<id> when a next hop is given, then answers "ok <id>".
// Prints "port N" once listening. Usage: node hop.js HOST PORT [NEXT_URL]
// HOP_TLS_CERT/HOP_TLS_KEY: serve HTTPS; HOP_TLS_CA: trust that certificate when calling next.
// Node's TLS runs OpenSSL over memory buffers: the event loop moves the ciphertext itself.
const fs = require('fs');
const http = require('http');
const https = require('https');
const [host, port, next] = process.argv.slice(2);
const env = process.env;
const client = next && next.startsWith('https:') ? https : http;
// A fresh connection per call, like the other hops (no pooling across requests), unless
// HOP_KEEPALIVE=1: then calls reuse their connections.
const agentOptions = { keepAlive: env.HOP_KEEPALIVE === '1' };
if (env.HOP_TLS_CA) agentOptions.ca = fs.readFileSync(env.HOP_TLS_CA);
const agent = new client.Agent(agentOptions);
const handler = (req, res) => {
  const rid = req.url.split('?')[0].split('/').pop();
  const answer = (status) => {
    const body = `ok ${rid}\n`;
    res.writeHead(status, { 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (!next) return answer(200);
  const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?')) : '';
  client
    .get(`${next}/hop/${rid}${query}`, { agent }, (r) => {
      r.resume();
      r.on('end', () => answer(r.statusCode === 200 ? 200 : 502));
    })
    .on('error', () => answer(502));
};
const server = env.HOP_TLS_CERT
  ? https.createServer({ cert: fs.readFileSync(env.HOP_TLS_CERT), key: fs.readFileSync(env.HOP_TLS_KEY) }, handler)
  : http.createServer(handler);
server.listen(Number(port), host, () => console.log(`port ${server.address().port}`));
