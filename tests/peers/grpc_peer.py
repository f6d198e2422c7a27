"""A gRPC service and client for tracewire's tests: grpcio (gRPC's C core), uninstrumented, no
generated code (messages are raw bytes).

  grpc_peer.py serve PORT [NEXT]   serves /shop.Cart/GetCart on 127.0.0.1:PORT (0: any), prints
                                   "port N". A call whose message contains "fail" fails with
                                   UNAVAILABLE; with NEXT (host:port), each call first calls
                                   /shop.Pricing/Quote there with the same message.
  grpc_peer.py call TARGET ID...   calls /shop.Cart/GetCart at TARGET once per ID on one channel,
                                   prints "<ID> <status>" per call.
"""
import sys
from concurrent import futures

import grpc


def identity(b):
    return b


def serve(port, next_target):
    channel = grpc.insecure_channel(next_target) if next_target else None
    quote = (
        channel.unary_unary("/shop.Pricing/Quote", request_serializer=identity, response_deserializer=identity)
        if channel
        else None
    )

    def handle(request, context):
        if quote is not None:
            quote(request, timeout=10)
        if b"fail" in request:
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend down")
        return b"ok " + request

    handlers = {
        "GetCart": grpc.unary_unary_rpc_method_handler(handle, request_deserializer=identity, response_serializer=identity),
        "Quote": grpc.unary_unary_rpc_method_handler(handle, request_deserializer=identity, response_serializer=identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("shop.Cart", handlers),
            grpc.method_handlers_generic_handler("shop.Pricing", handlers),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"port {bound}", flush=True)
    server.wait_for_termination()


def call(target, ids):
    with grpc.insecure_channel(target) as channel:
        get = channel.unary_unary("/shop.Cart/GetCart", request_serializer=identity, response_deserializer=identity)
        for i in ids:
            try:
                get(i.encode(), timeout=10)
                print(i, "OK", flush=True)
            except grpc.RpcError as e:
                print(i, e.code().name, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        call(sys.argv[2], sys.argv[3:])
