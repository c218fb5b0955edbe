#!/usr/bin/env python3
"""raftmq quickstart in Python: create a queue, produce, consume, ack, delete.

Generates the gRPC stubs from the repository's proto/ directory into a
temporary directory at start (nothing generated is checked in), then talks to
one node of a cluster; any node accepts any call.

    python examples/python/quickstart.py --endpoint 127.0.0.1:7001

Exit code 0 on success, 1 if a call failed, 2 for a usage or setup error.
"""

import argparse
import atexit
import importlib.resources
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def generate_stubs() -> None:
    """Compiles proto/raftmq/v1/*.proto with grpc_tools and makes them importable."""
    from grpc_tools import protoc

    out_dir = Path(tempfile.mkdtemp(prefix="raftmq-python-stubs-"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "raftmq" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"error: no .proto files under {PROTO_ROOT / 'raftmq' / 'v1'}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *protos,
        ]
    )
    if code != 0:
        sys.exit(f"error: protoc failed with exit code {code} on {protos}")
    sys.path.insert(0, str(out_dir))


def call(method, request, timeout=10.0, retry_for=15.0):
    """Calls `method`, retrying UNAVAILABLE (no leader yet, e.g. just after a
    queue is created) for up to `retry_for` seconds."""
    import grpc

    deadline = time.monotonic() + retry_for
    while True:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run(endpoint: str) -> None:
    import grpc
    from raftmq.v1 import messages_pb2, messages_pb2_grpc, queues_pb2, queues_pb2_grpc

    channel = grpc.insecure_channel(endpoint)
    grpc.channel_ready_future(channel).result(timeout=10)
    queues = queues_pb2_grpc.QueueServiceStub(channel)
    messages = messages_pb2_grpc.MessageServiceStub(channel)

    name = f"quickstart-{uuid.uuid4().hex[:8]}"
    call(queues.CreateQueue, queues_pb2.CreateQueueRequest(name=name))
    print(f"created queue {name}")
    try:
        # A retried produce (after UNAVAILABLE) can append its batch twice;
        # raftmq delivers at least once.
        produced = call(
            messages.Produce,
            messages_pb2.ProduceRequest(
                queue=name,
                messages=[
                    messages_pb2.ProduceMessage(body=f"hello {n}".encode(), headers={"n": str(n), "source": "quickstart"})
                    for n in (1, 2, 3)
                ],
            ),
        )
        print(f"produced 3 messages at offsets {list(produced.offsets)}")

        # Long polling: the server holds the call up to wait_time_ms until
        # messages are available.
        received = []
        deadline = time.monotonic() + 30
        while len(received) < 3 and time.monotonic() < deadline:
            response = call(
                messages.Consume,
                messages_pb2.ConsumeRequest(queue=name, max_messages=10, wait_time_ms=5000, visibility_timeout_ms=30000),
                timeout=15,
            )
            received.extend(response.messages)
        for m in received:
            headers = dict(sorted(m.headers.items()))
            print(f"received offset={m.offset} attempt={m.delivery_attempt} headers={headers} body={m.body.decode()!r}")
        if len(received) != 3:
            sys.exit(f"error: expected 3 messages, received {len(received)}")

        acked = call(messages.Ack, messages_pb2.AckRequest(queue=name, receipts=[m.receipt for m in received]))
        if acked.failed:
            sys.exit(f"error: some receipts failed: {acked.failed}")
        print(f"acked {acked.succeeded} messages")

        # Statistics come from the answering node's replica and may trail the
        # leader by a moment.
        depth = None
        deadline = time.monotonic() + 10
        while depth != 0 and time.monotonic() < deadline:
            info = call(queues.GetQueue, queues_pb2.GetQueueRequest(name=name)).queue
            depth = info.stats.depth if info.HasField("stats") else None
            if depth != 0:
                time.sleep(0.2)
        print(f"depth after ack: {depth}")
        if depth != 0:
            sys.exit("error: the queue is not empty after the ack")
    finally:
        call(queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=name))
        print(f"deleted queue {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:7001", help="host:port of any raftmq node (default %(default)s)")
    args = parser.parse_args()
    try:
        import grpc
    except ImportError:
        print("error: grpcio is not installed: pip install -r examples/python/requirements.txt", file=sys.stderr)
        return 2
    generate_stubs()
    try:
        run(args.endpoint)
    except grpc.FutureTimeoutError:
        print(f"error: no raftmq node answers at {args.endpoint}; start one with scripts/dev", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
