#!/usr/bin/env python3
"""raftmq quickstart in Python: create a queue, produce, consume, ack, delete.

Generates the gRPC stubs from the repository's proto/ directory into a
temporary directory at start (nothing generated is checked in, see
raftmq_grpc.py), then talks to one node of a cluster; any node accepts any
call.

    python examples/python/quickstart.py --endpoint 127.0.0.1:7001

Exit code 0 on success, 1 if a call failed, 2 for a usage or setup error.
"""

import sys
import time
import uuid

from raftmq_grpc import call, main


def run(channel) -> None:
    from raftmq.v1 import messages_pb2, messages_pb2_grpc, queues_pb2, queues_pb2_grpc

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


if __name__ == "__main__":
    sys.exit(main(__doc__, run))
