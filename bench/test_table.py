"""Tests of bench/table.py, the script that turns bench/compare.sh's runs
into the side-by-side table: the medians, the ratios (cut, never rounded
up to a target) and the flags on runs that failed. Run by scripts/test:

    python3 -m unittest discover -s bench -p 'test_*.py'
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import table  # noqa: E402


def bench(produce, consume, pp99=5.0, ep99=9.0, rate=None):
    summary = {
        "produced": 1000,
        "consumed": 1000,
        "produce_msgs_per_sec": produce,
        "consume_msgs_per_sec": consume,
        "produce_call_ms": {"p50": 2.0, "p99": pp99},
        "end_to_end_ms": {"p50": 3.0, "p99": ep99},
    }
    if rate is not None:
        summary["rate"] = rate
    return summary


def raw_line(target, row, repeat, summary, exit_status="0"):
    payload = json.dumps(summary) if summary is not None else "{}"
    return f"{target}\t{row}\t{repeat}\t{exit_status}\t{payload}\n"


class FmtRatio(unittest.TestCase):
    def test_cuts_instead_of_rounding(self):
        self.assertEqual(table.fmt_ratio(1998, 1000), "1.99×")
        self.assertEqual(table.fmt_ratio(1999.9, 1000), "1.99×")
        self.assertEqual(table.fmt_ratio(2000, 1000), "2.00×")

    def test_survives_floating_point(self):
        # 2.3 × 100 is 229.999… in floating point.
        self.assertEqual(table.fmt_ratio(2.3, 1), "2.30×")
        self.assertEqual(table.fmt_ratio(3.64, 1), "3.64×")

    def test_missing_values(self):
        self.assertEqual(table.fmt_ratio(None, 1000), "–")
        self.assertEqual(table.fmt_ratio(1000, 0), "–")
        self.assertEqual(table.fmt_ratio(1000, None), "–")


class Summarize(unittest.TestCase):
    def test_medians_over_runs_with_a_summary(self):
        runs = [
            {"target": "raftmq", "row": "h", "repeat": i, "exit": "0", **bench(p, c)}
            for i, (p, c) in enumerate([(100, 90), (300, 270), (200, 180)])
        ]
        runs.append({"target": "raftmq", "row": "h", "repeat": 3, "exit": "1"})
        s = table.summarize(runs)
        self.assertEqual((s["n"], s["ok"], s["bad"]), (4, 3, 1))
        self.assertEqual((s["produce"], s["consume"]), (200, 180))
        self.assertEqual(s["pp99"], 5.0)

    def test_a_run_that_left_messages_unconsumed_is_bad(self):
        short = {**bench(100, 90), "consumed": 999}
        s = table.summarize([{"target": "nats", "row": "h", "repeat": 0, "exit": "0", **short}])
        self.assertEqual((s["ok"], s["bad"]), (1, 1))

    def test_an_even_count_takes_the_mean_of_the_middle_two(self):
        runs = [{"target": "raftmq", "row": "h", "repeat": i, "exit": "0", **bench(p, p)} for i, p in enumerate([1, 2, 4, 8])]
        self.assertEqual(table.summarize(runs)["produce"], 3)


class WholeTable(unittest.TestCase):
    def run_table(self, lines, rows):
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "raw.tsv")
            jsonl = os.path.join(tmp, "out.jsonl")
            with open(raw, "w") as f:
                f.writelines(lines)
            argv = ["table.py", raw, jsonl, "--meta", "repeats=3", "machine=2 cores", "--rows", rows]
            out = io.StringIO()
            old_argv, sys.argv = sys.argv, argv
            try:
                with contextlib.redirect_stdout(out):
                    table.main()
            finally:
                sys.argv = old_argv
            with open(jsonl) as f:
                written = [json.loads(line) for line in f]
        return out.getvalue().splitlines(), written

    def test_rows_ratios_and_flags(self):
        lines = []
        for i, (ours, theirs) in enumerate([(5000, 2600), (5400, 2500), (5200, 2700)]):
            lines.append(raw_line("raftmq", "large", i, bench(ours, ours - 100)))
            lines.append(raw_line("rabbitmq", "large", i, bench(theirs, theirs)))
        lines.append(raw_line("raftmq", "half", 0, bench(2500, 2500, pp99=4.3, rate=2600)))
        lines.append(raw_line("nats", "large", 0, None, exit_status="124"))
        lines.append(raw_line("nats", "large", 1, bench(4000, 4000)))
        out, written = self.run_table(lines, "large=64 KiB messages;half=half load")

        self.assertEqual(len(written), 9, "one JSON line per run")
        self.assertEqual(written[0]["target"], "raftmq")
        rows = [line for line in out if line.startswith("| 64 KiB") or line.startswith("| half")]
        rabbit = next(line for line in rows if "RabbitMQ" in line)
        # 5,200 ÷ 2,600 = 2.00; end to end 5,100 ÷ 2,600 = 1.96 (cut, not rounded).
        self.assertIn("| 5,200 | 5,100 |", next(line for line in rows if "| raftmq |" in line))
        self.assertTrue(rabbit.endswith("| 2.00× | 1.96× |"), rabbit)
        nats = next(line for line in rows if "JetStream" in line)
        self.assertIn("(1 of 2 runs failed or left messages unconsumed)", nats)
        self.assertTrue(nats.endswith("| 1.30× | 1.27× |"), nats)
        half = next(line for line in rows if line.startswith("| half"))
        self.assertIn("(2,600 msg/s offered)", half)
        self.assertIn("/ 4.3 |", half)
        self.assertTrue(any(line.startswith("- a flagged cell") for line in out))
        # The half row is raftmq's alone: no peer line for it.
        self.assertEqual(sum(line.startswith("| half") for line in rows), 1)


if __name__ == "__main__":
    unittest.main()
