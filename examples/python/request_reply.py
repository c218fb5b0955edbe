#!/usr/bin/env python3
"""Request/reply over raftmq (like oslo.messaging `call` or a Celery result).

A server thread consumes requests from a queue and answers each with Reply,
using the request's raftmq-reply-to and raftmq-correlation-id headers. The
client calls Request, which produces the request and waits, up to the call's
deadline, for the matching reply. One request times out on purpose; its late
reply is kept in the reply queue, where a Consume by correlation id finds it.

    python examples/python/request_reply.py --endpoint 127.0.0.1:7001

Exit code 0 on success, 1 if a call failed, 2 for a usage or setup error.
"""

import json
import sys
import threading
import time
import uuid

from raftmq_grpc import call, main


def run(channel) -> None:
    import grpc
    from raftmq.v1 import messages_pb2, messages_pb2_grpc, queues_pb2, queues_pb2_grpc

    queues = queues_pb2_grpc.QueueServiceStub(channel)
    messages = messages_pb2_grpc.MessageServiceStub(channel)
    suffix = uuid.uuid4().hex[:8]
    requests, replies = f"rpc-{suffix}", f"rpc-{suffix}.replies"
    call(queues.CreateQueue, queues_pb2.CreateQueueRequest(name=requests))
    # Unclaimed replies expire after a minute.
    config = queues_pb2.QueueConfig(message_ttl_ms=60_000)
    call(queues.CreateQueue, queues_pb2.CreateQueueRequest(name=replies, config=config))
    print(f"created queues {requests} and {replies}")
    stop = threading.Event()
    slow = threading.Event()

    def server():
        while not stop.is_set():
            leased = call(
                messages.Consume, messages_pb2.ConsumeRequest(queue=requests, max_messages=1, wait_time_ms=500), timeout=10
            ).messages
            for m in leased:
                args = json.loads(m.body)
                if slow.is_set():
                    time.sleep(3)
                answer = {"sum": sum(args["numbers"])}
                call(
                    messages.Reply,
                    messages_pb2.ReplyRequest(
                        reply_to=m.headers["raftmq-reply-to"],
                        correlation_id=m.headers["raftmq-correlation-id"],
                        message=messages_pb2.ProduceMessage(body=json.dumps(answer).encode()),
                    ),
                )
                call(messages.Ack, messages_pb2.AckRequest(queue=requests, receipts=[m.receipt]))

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    try:
        for numbers in ([1, 2, 3], [10, 20]):
            body = json.dumps({"numbers": numbers}).encode()
            response = call(
                messages.Request,
                messages_pb2.RequestRequest(
                    queue=requests, reply_queue=replies, message=messages_pb2.ProduceMessage(body=body)
                ),
                timeout=10,
            )
            print(f"call sum{numbers} -> {json.loads(response.reply.body)['sum']}")

        # A call whose reply comes after its deadline.
        slow.set()
        body = json.dumps({"numbers": [5, 5]}).encode()
        try:
            messages.Request(
                messages_pb2.RequestRequest(
                    queue=requests,
                    reply_queue=replies,
                    correlation_id="late-call",
                    message=messages_pb2.ProduceMessage(body=body),
                ),
                timeout=1.5,
            )
            sys.exit("error: the slow call did not time out")
        except grpc.RpcError as error:
            print(f"slow call -> {error.code().name}")
        late = call(
            messages.Consume,
            messages_pb2.ConsumeRequest(queue=replies, max_messages=1, wait_time_ms=10_000, correlation_id="late-call"),
            timeout=15,
        ).messages
        if len(late) != 1:
            sys.exit("error: the late reply was not kept")
        print(f"late reply kept: {json.loads(late[0].body)['sum']}")
        call(messages.Ack, messages_pb2.AckRequest(queue=replies, receipts=[late[0].receipt]))
    finally:
        stop.set()
        thread.join(timeout=15)
        call(queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=requests))
        call(queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=replies))
        print(f"deleted queues {requests} and {replies}")


if __name__ == "__main__":
    sys.exit(main(__doc__, run))
