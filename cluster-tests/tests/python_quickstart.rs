//! Proves the Python examples in examples/python work against a real cluster
//! with the pinned grpcio versions: each exits 0 and prints what its README
//! promises.

use std::time::Duration;

use raftmq_cluster_tests::{CommandOutput, READY_TIMEOUT, TestCluster, run_python_example};

/// Runs `script` against a fresh three-node cluster through node `node`;
/// panics unless it exits 0.
async fn run_example(script: &str, node: u64, timeout: Duration) -> CommandOutput {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;
    let output = run_python_example(script, &cluster.addr(node).to_string(), timeout).await;
    output.assert_success();
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_quickstart() {
    let output = run_example("quickstart.py", 2, Duration::from_secs(120)).await;

    let lines: Vec<&str> = output.stdout.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(has("created queue quickstart-"), "{output}");
    assert!(has("produced 3 messages at offsets [0, 1, 2]"), "{output}");
    for n in 1..=3 {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("received offset={} ", n - 1)))
            .unwrap_or_else(|| panic!("message {n} not received: {output}"));
        assert!(line.contains("attempt=1"), "{line}");
        assert!(line.contains(&format!("body='hello {n}'")), "{line}");
        assert!(line.contains(&format!("'n': '{n}'")), "headers not delivered: {line}");
    }
    assert!(has("acked 3 messages"), "{output}");
    assert!(has("depth after ack: 0"), "{output}");
    assert!(has("deleted queue quickstart-"), "{output}");
}

/// The Celery-style worker pool: flaky tasks are retried and complete, the
/// two poisoned ones are dead-lettered after three deliveries, and one of
/// them completes after a redrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_pool() {
    let output = run_example("worker_pool.py", 1, Duration::from_secs(180)).await;

    let lines: Vec<&str> = output.stdout.lines().collect();
    let line = |prefix: &str| {
        *lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?}: {output}"))
    };
    assert!(line("enqueued ").contains("24 tasks"), "{output}");
    let completed = line("completed 22 tasks; retried and then completed: ");
    for flaky in ["t0", "t5", "t10", "t15", "t20"] {
        assert!(completed.contains(&format!("'{flaky}'")), "flaky task {flaky} not retried: {completed}");
    }
    let dead: Vec<&&str> = lines.iter().filter(|l| l.starts_with("dead letter ")).collect();
    assert_eq!(dead.len(), 2, "{output}");
    for l in dead {
        assert!(l.contains("reason=max_deliveries deliveries=3 from=tasks-"), "{l}");
        assert!(l.starts_with("dead letter t7:") || l.starts_with("dead letter t19:"), "{l}");
    }
    assert_eq!(line("redrove "), "redrove 1 dead letter");
    let redone = line("completed after redrive: ");
    assert!(redone.contains("'t7'") || redone.contains("'t19'"), "{redone}");
    assert!(line("deleted queues tasks-").contains(".dlq"), "{output}");
}

/// Request/reply: two calls answered by a server thread, and a call whose
/// reply comes after its deadline, found later by its correlation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_request_reply() {
    let output = run_example("request_reply.py", 3, Duration::from_secs(120)).await;
    let lines: Vec<&str> = output.stdout.lines().collect();
    for expected in
        ["call sum[1, 2, 3] -> 6", "call sum[10, 20] -> 30", "slow call -> DEADLINE_EXCEEDED", "late reply kept: 10"]
    {
        assert!(lines.contains(&expected), "no line {expected:?}: {output}");
    }
    assert!(lines.iter().any(|l| l.starts_with("deleted queues rpc-")), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pubsub() {
    let output = run_example("pubsub.py", 2, Duration::from_secs(120)).await;
    let lines: Vec<&str> = output.stdout.lines().collect();
    let events: Vec<String> = (0..6).map(|i| format!("instance.create.{i}")).collect();
    for subscription in ["billing", "audit"] {
        let prefix = format!("{subscription} received 6 events: ");
        let line = lines.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix:?}: {output}"));
        for event in &events {
            assert!(line.contains(event.as_str()), "{subscription} missed {event}: {line}");
        }
    }
    assert!(lines.contains(&"subscriptions: default depth=6, billing depth=0, audit depth=0"), "{output}");
    assert!(lines.iter().any(|l| l.starts_with("audit replayed 6 events after seeking to offset 0")), "{output}");
    assert!(lines.iter().any(|l| l.starts_with("deleted queue notifications-")), "{output}");
}
