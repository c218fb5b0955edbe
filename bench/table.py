#!/usr/bin/env python3
"""Builds bench/compare.sh's markdown table from its raw runs.

    table.py RAW.tsv OUT.jsonl --meta key=value ... --rows "name=title;..."

RAW.tsv has one line per run: target, row, repeat, exit status, and the
`BENCH {json}` summary of `raftmq bench` or `peerbench` ({} when there was
none). Writes one JSON line per run to OUT.jsonl and prints the table of
medians over the runs that printed a summary.
"""

import argparse
import json
import math
import statistics
import sys

TARGETS = ["raftmq", "rabbitmq", "nats", "nats-sync"]


def target_names(meta):
    nats = meta.get("nats", "nats-server").replace("nats-server: ", "NATS ")
    rabbit = meta.get("rabbitmq", "RabbitMQ")
    return {
        "raftmq": "raftmq",
        "rabbitmq": f"{rabbit}, quorum queue",
        "nats": f"{nats} JetStream, default (sync every 2 min)",
        "nats-sync": f"{nats} JetStream, sync_interval: always",
    }


def load(raw_path):
    runs = []
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            target, row, rep, rc, payload = line.split("\t", 4)
            try:
                bench = json.loads(payload)
            except json.JSONDecodeError:
                bench = {}
            runs.append({"target": target, "row": row, "repeat": int(rep), "exit": rc, **bench})
    return runs


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_rate(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def fmt_ratio(ours, theirs):
    """Cut to two decimals, not rounded: the targets are "at least 2×" and
    "at least 1×", and 1.998 must not print as 2.00. Rounded to a millionth
    of a hundredth first: in floating point 2.3 × 100 is 229.999…, which a
    bare floor would print as 2.29."""
    if ours is None or not theirs:
        return "–"
    return f"{math.floor(round(ours / theirs * 100, 6)) / 100:.2f}×"


def summarize(runs):
    ok = [r for r in runs if "produced" in r]
    bad = [r for r in runs if r["exit"] != "0" or r.get("consumed", 0) < r.get("produced", 0)]
    pick = lambda key, sub=None: median([(r.get(key) or {}).get(sub) if sub else r.get(key) for r in ok])
    return {
        "n": len(runs),
        "ok": len(ok),
        "bad": len(bad),
        "produce": pick("produce_msgs_per_sec"),
        "consume": pick("consume_msgs_per_sec"),
        "pp50": pick("produce_call_ms", "p50"),
        "pp99": pick("produce_call_ms", "p99"),
        "ep50": pick("end_to_end_ms", "p50"),
        "ep99": pick("end_to_end_ms", "p99"),
        "rate": pick("rate"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("jsonl")
    ap.add_argument("--meta", nargs="*", default=[])
    ap.add_argument("--rows", default="")
    args = ap.parse_args()
    meta = dict(kv.split("=", 1) for kv in args.meta)
    titles = dict(kv.split("=", 1) for kv in args.rows.split(";") if kv)
    runs = load(args.raw)
    with open(args.jsonl, "w") as f:
        for r in runs:
            f.write(json.dumps(r) + "\n")

    names = target_names(meta)
    rows = list(titles) or sorted({r["row"] for r in runs})
    targets = [t for t in TARGETS if any(r["target"] == t for r in runs)]
    out = []
    out.append(f"## raftmq vs RabbitMQ vs NATS JetStream, {meta.get('started', '')}")
    out.append("")
    out.append(
        f"bench/compare.sh: three-node clusters on loopback, one at a time, on one machine "
        f"({meta.get('machine', '?')}; servers and clients share it). "
        f"{meta.get('duration', '?')} s of producing per run, then up to {meta.get('drain', '?')} s of draining; "
        f"medians of {meta.get('repeats', '?')} run(s) per cell."
    )
    out.append("")
    out.append(
        "| workload | target | produce msg/s | end-to-end msg/s | produce p50 / p99 ms | "
        "end-to-end p50 / p99 ms | raftmq ÷ target, produce | raftmq ÷ target, end-to-end |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    flagged = False
    for row in rows:
        ours = summarize([r for r in runs if r["row"] == row and r["target"] == "raftmq"])
        for t in targets:
            row_runs = [r for r in runs if r["row"] == row and r["target"] == t]
            if not row_runs:
                continue  # the half row is raftmq's alone
            s = summarize(row_runs)
            name = names[t]
            if s["bad"]:
                name += f" ({s['bad']} of {s['n']} runs failed or left messages unconsumed)"
                flagged = True
            ratio_p = "–" if t == "raftmq" else fmt_ratio(ours["produce"], s["produce"])
            ratio_c = "–" if t == "raftmq" else fmt_ratio(ours["consume"], s["consume"])
            title = titles.get(row, row)
            if s["rate"]:
                title += f" ({s['rate']:,.0f} msg/s offered)"
            out.append(
                f"| {title} | {name} | {fmt_rate(s['produce'])} | {fmt_rate(s['consume'])} | "
                f"{fmt_ms(s['pp50'])} / {fmt_ms(s['pp99'])} | {fmt_ms(s['ep50'])} / {fmt_ms(s['ep99'])} | "
                f"{ratio_p} | {ratio_c} |"
            )
    mode = meta.get("peer_mode", "batch")
    out.append("")
    out.append("- produce msg/s: acknowledged messages ÷ the producing time; end-to-end msg/s: consumed (and acked) "
               "messages ÷ the whole run, draining included (the definitions of `raftmq bench`).")
    if mode == "batch":
        out.append("- produce latency: for raftmq one Produce call of 64 messages, from sending to the committed "
                   "answer; for RabbitMQ and NATS the same unit: 64 publishes sent back to back, until the last "
                   "of their 64 confirms (peerbench --mode batch).")
    else:
        out.append("- produce latency: for raftmq one Produce call of 64 messages, from sending to the committed "
                   "answer; for RabbitMQ and NATS one publish to its confirm, with 64 kept in flight "
                   "(peerbench --mode window): not the same unit.")
    out.append("- end-to-end latency: raftmq from the leader's publish_time_ms (when the leader took the Produce; "
               "ms resolution) to receipt; RabbitMQ and NATS from the producer's clock just before the publish "
               "(in the body's first 8 bytes, µs) to receipt, so theirs also counts the client-to-server hop.")
    if any(r.get("rate") for r in runs):
        out.append("- offered rate: raftmq alone, `raftmq bench --rate R` with R half the median of this run's "
                   "raftmq headline runs before it: an open loop, calls go out on schedule whatever is unanswered "
                   "(up to 16 per producer), and a call's latency counts from when it was due.")
    if meta.get("bodies") == "random":
        out.append("- bodies: random bytes (`--random-bodies`; peerbench keeps its first 16 bytes for the publish "
                   "time and an id), which RocksDB's LZ4 cannot shrink when it flushes.")
    else:
        out.append("- bodies: the letter x repeated (peerbench: after 16 bytes of publish time and id), which "
                   "RocksDB's LZ4 shrinks to almost nothing when it flushes; RabbitMQ and NATS store them as "
                   "they are. `BODIES=random` measures incompressible bodies.")
    out.append("- ratio: raftmq's median ÷ the target's median, cut (not rounded) to two decimals, so that 2.00× "
               "means at least 2; above 1× raftmq is faster.")
    out.append("- durability: raftmq and RabbitMQ quorum queues fsync before acknowledging a publish "
               "(on a majority); NATS by default acknowledges once a majority has the message in memory and "
               "fsyncs every 2 minutes; `sync_interval: always` makes it sync every write before acknowledging.")
    out.append("- every consumer acks each message individually; RabbitMQ: prefetch 256 per consumer, NATS: "
               "one durable pull consumer, batches of 256, max_ack_pending 256 × consumers; raftmq: Consume of "
               "up to 256, whose receipts are acked by the consumer's next Consume (`ConsumeRequest.ack`: "
               "ack and next lease in one Raft entry).")
    if meta.get("any_node"):
        out.append("- clients use any node: `raftmq bench --any-node` sends every call to node 1, which forwards "
                   "to the queue's leader; peerbench `--any-node` spreads its connections over the three nodes.")
    else:
        out.append("- clients talk to the leaders: `raftmq bench` sends its calls to the queue's leader; peerbench "
                   "connects to the RabbitMQ node that declared the quorum queue (leader locator client-local), "
                   "and for NATS its producers to the stream leader's server, its consumers to the consumer "
                   "leader's server.")
    if meta.get("raftmq_threads"):
        peer = meta.get("peer_threads", "default")
        out.append(f"- runtime threads per node: raftmq {meta['raftmq_threads']} (a third of the cores, as "
                   f"`raftmq dev` gives each node); RabbitMQ schedulers and NATS GOMAXPROCS "
                   + ("their defaults (one per core)." if peer == "default" else f"{peer} (PEER_THREADS)."))
    if flagged:
        out.append("- a flagged cell's medians are over the runs that printed a summary; see the JSON lines.")
    out.append("")
    out.append(f"Versions: raftmq {meta.get('raftmq', '?')}; {meta.get('rabbitmq', '?')}; "
               f"{meta.get('nats', '?')}. Peer client: bench/peers (lapin, async-nats), release build. "
               f"Load average before: {meta.get('load_before', '?')}, after: {meta.get('load_after', '?')}; "
               f"CPU in the 3 s before the start: {meta.get('busy_before', '?')}"
               + (f"; before later rounds: {meta['rounds_cpu'].rstrip('; ')}" if meta.get("rounds_cpu") else "")
               + ".")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
