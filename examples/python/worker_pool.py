#!/usr/bin/env python3
"""A Celery-style worker pool on raftmq: retries with backoff and a dead-letter queue.

A producer enqueues tasks as JSON. Four worker threads compete for them: each
leases a few tasks, runs them, acks what succeeded and nacks what raised, so
that raftmq redelivers it after the queue's retry backoff. A task that fails
on every one of its max_deliveries attempts moves to the dead-letter queue,
where the script reads why it died. Then it redrives one dead task, which the
workers (now told it is fixed) complete.

    python examples/python/worker_pool.py --endpoint 127.0.0.1:7001

Exit code 0 on success, 1 if a call failed, 2 for a usage or setup error.
"""

import json
import sys
import threading
import time
import uuid

from raftmq_grpc import call, main

WORKERS = 4
MAX_DELIVERIES = 3
TASKS = 24


class Poisoned(Exception):
    """A task that can never succeed, until it is fixed."""


def run_task(task, attempt, fixed):
    """The "business logic": add numbers. Every fifth task is flaky (fails on
    its first attempt); "poison" tasks fail every time unless fixed."""
    if task["kind"] == "poison" and task["id"] not in fixed:
        raise Poisoned(f"task {task['id']} is poisoned")
    if task["kind"] == "flaky" and attempt == 1:
        raise RuntimeError(f"task {task['id']} hit a transient error")
    return sum(task["args"])


def run(channel) -> None:
    from raftmq.v1 import messages_pb2, messages_pb2_grpc, queues_pb2, queues_pb2_grpc

    queues = queues_pb2_grpc.QueueServiceStub(channel)
    messages = messages_pb2_grpc.MessageServiceStub(channel)
    name = f"tasks-{uuid.uuid4().hex[:8]}"
    dlq = f"{name}.dlq"

    call(queues.CreateQueue, queues_pb2.CreateQueueRequest(name=dlq))
    config = queues_pb2.QueueConfig(
        visibility_timeout_ms=10_000,
        max_deliveries=MAX_DELIVERIES,
        dead_letter_queue=dlq,
        retry_backoff_min_ms=200,
        retry_backoff_max_ms=1_000,
    )
    call(queues.CreateQueue, queues_pb2.CreateQueueRequest(name=name, config=config))
    print(f"created queue {name} (max_deliveries={MAX_DELIVERIES}, dead letters to {dlq})")
    try:
        tasks = []
        for i in range(TASKS):
            kind = "poison" if i in (7, 19) else "flaky" if i % 5 == 0 else "ok"
            tasks.append({"id": f"t{i}", "kind": kind, "args": [i, i * 10]})
        # The task id as dedup id: a produce retried after a lost answer
        # stores each task once.
        call(
            messages.Produce,
            messages_pb2.ProduceRequest(
                queue=name,
                messages=[
                    messages_pb2.ProduceMessage(body=json.dumps(t).encode(), dedup_id=t["id"], headers={"task": t["kind"]})
                    for t in tasks
                ],
            ),
        )
        print(f"enqueued {len(tasks)} tasks")

        results = {}
        attempts = {}
        lock = threading.Lock()
        fixed = set()
        stop = threading.Event()

        def worker(n):
            while not stop.is_set():
                leased = call(
                    messages.Consume,
                    messages_pb2.ConsumeRequest(queue=name, max_messages=3, wait_time_ms=500),
                    timeout=10,
                ).messages
                done, failed = [], []
                for m in leased:
                    task = json.loads(m.body)
                    with lock:
                        attempts[task["id"]] = max(attempts.get(task["id"], 0), m.delivery_attempt)
                        now_fixed = set(fixed)
                    try:
                        value = run_task(task, m.delivery_attempt, now_fixed)
                    except Exception:  # noqa: BLE001 - a task failure of any kind is retried
                        failed.append(m.receipt)
                        continue
                    with lock:
                        results[task["id"]] = value
                    done.append(m.receipt)
                if done:
                    call(messages.Ack, messages_pb2.AckRequest(queue=name, receipts=done))
                if failed:
                    # No delay_ms: raftmq redelivers after the queue's backoff
                    # (200 ms, 400 ms, ... with jitter), or dead-letters the
                    # task after its last attempt.
                    call(messages.Nack, messages_pb2.NackRequest(queue=name, receipts=failed))

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(WORKERS)]
        for t in threads:
            t.start()

        def peek(queue):
            return call(messages.Peek, messages_pb2.PeekRequest(queue=queue, max_messages=1000)).messages

        good = {t["id"] for t in tasks if t["kind"] != "poison"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                complete = good.issubset(results)
            if complete and len(peek(dlq)) == 2:
                break
            time.sleep(0.2)
        else:
            sys.exit(f"error: not done in 60 s: {len(results)} results, {len(peek(dlq))} dead letters")

        with lock:
            retried = sorted(k for k, a in attempts.items() if a > 1 and k in results)
        print(f"completed {len(results)} tasks; retried and then completed: {retried}")
        dead = peek(dlq)
        for m in dead:
            task = json.loads(m.body)
            h = m.headers
            print(
                f"dead letter {task['id']}: reason={h['raftmq-dlq-reason']} "
                f"deliveries={h['raftmq-dlq-delivery-count']} from={h['raftmq-dlq-source-queue']}"
            )

        # Fix the first dead task and send it back through the queue: redrive
        # takes the dead-letter queue's messages in offset order.
        first_dead = json.loads(dead[0].body)["id"]
        with lock:
            fixed.add(first_dead)
        redriven = call(queues.Redrive, queues_pb2.RedriveRequest(queue=dlq, max_messages=1))
        print(f"redrove {redriven.moved} dead letter")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if len(results) == len(good) + 1:
                    break
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        with lock:
            redone = sorted(set(results) - good)
        print(f"completed after redrive: {redone}")
        if redone != [first_dead]:
            sys.exit(f"error: expected {first_dead} completed after the redrive")
        print(f"result of {first_dead}: {results[first_dead]}")
    finally:
        call(queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=name))
        call(queues.DeleteQueue, queues_pb2.DeleteQueueRequest(name=dlq))
        print(f"deleted queues {name} and {dlq}")


if __name__ == "__main__":
    sys.exit(main(__doc__, run))
