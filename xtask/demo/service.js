// A leaf service of the tracewire demo in Node.js: ordinary and uninstrumented.
// Usage: node service.js WORK_MS. Prints "port N" once listening on 127.0.0.1.
const http = require('http');
const workMs = Number(process.argv[2] || 0);
const server = http.createServer((req, res) => {
  setTimeout(() => {
    const body = JSON.stringify({ ok: true, service: process.env.OTEL_SERVICE_NAME });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }, workMs);
});
server.listen(0, '127.0.0.1', () => console.log(`port ${server.address().port}`));
