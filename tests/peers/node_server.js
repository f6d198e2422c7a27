// A small uninstrumented Node.js HTTP server for tracewire's tests: prints "port N" once
// listening; GET /bytes/N answers N bytes; anything else "ok".
const http = require('http');
const server = http.createServer((req, res) => {
  let body = 'ok\n';
  const m = req.url.match(/^\/bytes\/(\d+)/);
  if (m) body = 'x'.repeat(Number(m[1]));
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen(0, '127.0.0.1', () => console.log(`port ${server.address().port}`));
