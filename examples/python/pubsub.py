#!/usr/bin/env python3
"""Publish/subscribe over raftmq: one queue, two subscriptions, fan-out.

Like OpenStack notifications or a JMS topic: a publisher produces events to
one queue; the "billing" and "audit" subscriptions each receive every event,
with their own leases and acks, and each is consumed by its own worker
thread. The queue retains acked events for ten minutes, so afterwards the
audit subscription seeks back to the first event and replays all of them.

    python examples/python/pubsub.py --endpoint 127.0.0.1:7001

Exit code 0 on success, 1 if a call failed, 2 for a usage or setup error.
"""

import json
import sys
import threading
import uuid

from raftmq_grpc import call, main

EVENTS = 6


def run(channel) -> None:
    from raftmq.v1 import messages_pb2, messages_pb2_grpc, queues_pb2, queues_pb2_grpc

    queues = queues_pb2_grpc.QueueServiceStub(channel)
    messages = messages_pb2_grpc.MessageServiceStub(channel)
    topic = f"notifications-{uuid.uuid4().hex[:8]}"
    config = queues_pb2.QueueConfig(retention_ms=10 * 60 * 1000)
    call(queues.CreateQueue, queues_pb2.CreateQueueRequest(name=topic, config=config))
    for name in ("billing", "audit"):
        # Starts at the latest offset: it receives what is published from now on.
        call(queues.CreateSubscription, queues_pb2.CreateSubscriptionRequest(queue=topic, name=name))
    print(f"created queue {topic} with subscriptions billing and audit")

    def consume(subscription: str, count: int) -> list:
        """Receives `count` events from the subscription, acking each."""
        received = []
        while len(received) < count:
            batch = call(
                messages.Consume,
                messages_pb2.ConsumeRequest(
                    queue=topic, subscription=subscription, max_messages=10, wait_time_ms=2000
                ),
                timeout=10,
            ).messages
            if not batch:
                break
            received.extend(json.loads(m.body)["event"] for m in batch)
            # A receipt names its subscription: the ack settles it there only.
            call(messages.Ack, messages_pb2.AckRequest(queue=topic, receipts=[m.receipt for m in batch]))
        return received

    results = {}
    workers = [
        threading.Thread(target=lambda s=s: results.__setitem__(s, consume(s, EVENTS)))
        for s in ("billing", "audit")
    ]
    for worker in workers:
        worker.start()
    events = [
        messages_pb2.ProduceMessage(body=json.dumps({"event": f"instance.create.{i}"}).encode()) for i in range(EVENTS)
    ]
    offsets = call(messages.Produce, messages_pb2.ProduceRequest(queue=topic, messages=events)).offsets
    print(f"published {len(offsets)} events")
    for worker in workers:
        worker.join(timeout=60)
    for subscription in ("billing", "audit"):
        got = results.get(subscription, [])
        print(f"{subscription} received {len(got)} events: {', '.join(got)}")
        if len(got) != EVENTS:
            sys.exit(f"error: {subscription} received {len(got)} of {EVENTS} events")

    listed = call(queues.ListSubscriptions, queues_pb2.ListSubscriptionsRequest(queue=topic)).subscriptions
    print("subscriptions: " + ", ".join(f"{s.name} depth={s.depth}" for s in listed))

    # Replay: everything is acked, but retention keeps it.
    pending = call(
        queues.Seek, queues_pb2.SeekRequest(queue=topic, subscription="audit", offset=offsets[0])
    ).pending
    replayed = consume("audit", pending)
    print(f"audit replayed {len(replayed)} events after seeking to offset {offsets[0]}")
    if len(replayed) != EVENTS:
        sys.exit(f"error: the replay gave {len(replayed)} of {EVENTS} events")

    call(queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=topic))
    print(f"deleted queue {topic}")


if __name__ == "__main__":
    sys.exit(main(__doc__, run))
