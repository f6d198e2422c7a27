"""A gateway instrumented with the official OpenTelemetry Python SDK, for tracewire's tests.

GET /hop/<id>: a SERVER span (continuing an incoming traceparent, if any), then a CLIENT span
for GET <next>/hop/<id> with the SDK's traceparent injected, then "ok <id>". Spans are exported
at once (SimpleSpanProcessor) over OTLP/HTTP to OTLP_URL. Prints "port N" once listening.
Usage: sdk_gateway.py OTLP_URL NEXT_URL
"""
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "sdk-gateway"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1])))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("sdk-gateway")
NEXT = sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        rid = self.path.rsplit("/", 1)[-1]
        parent = propagate.extract(dict(self.headers))
        with tracer.start_as_current_span(f"GET /hop/{rid}", context=parent, kind=trace.SpanKind.SERVER):
            url = f"{NEXT}/hop/{rid}"
            with tracer.start_as_current_span(f"GET {url}", kind=trace.SpanKind.CLIENT):
                headers = {}
                propagate.inject(headers)
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
                    r.read()
            body = f"ok {rid}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
