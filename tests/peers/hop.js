// One hop of a service chain for tracewire's tests in Node.js (uninstrumented, one event loop).
// GET /hop/<id> calls GET <next>/hop/<id> when a next hop is given, then answers "ok <id>".
// Prints "port N" once listening. Usage: node hop.js HOST PORT [NEXT_URL]
const http = require('http');
const [host, port, next] = process.argv.slice(2);
// A fresh connection per call, like the other hops (no pooling across requests).
const agent = new http.Agent({ keepAlive: false });
const server = http.createServer((req, res) => {
  const rid = req.url.split('/').pop();
  const answer = (status) => {
    const body = `ok ${rid}\n`;
    res.writeHead(status, { 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  if (!next) return answer(200);
  http
    .get(`${next}/hop/${rid}`, { agent }, (r) => {
      r.resume();
      r.on('end', () => answer(r.statusCode === 200 ? 200 : 502));
    })
    .on('error', () => answer(502));
});
server.listen(Number(port), host, () => console.log(`port ${server.address().port}`));
