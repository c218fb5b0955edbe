//! Proves the Python example in examples/python works against a real cluster
//! with the pinned grpcio versions: it exits 0 and prints what its README
//! promises.

use std::process::Command;
use std::time::Duration;

use raftmq_cluster_tests::{READY_TIMEOUT, TestCluster, repo_root, run_with_timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_quickstart() {
    let python = std::env::var_os("RAFTMQ_PYTHON").expect(
        "RAFTMQ_PYTHON is not set: run scripts/test, which creates a venv with \
         examples/python/requirements.txt and points RAFTMQ_PYTHON at its python",
    );
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;

    let mut command = Command::new(&python);
    command
        .arg("examples/python/quickstart.py")
        .arg("--endpoint")
        .arg(cluster.addr(2).to_string())
        .current_dir(repo_root());
    let output = run_with_timeout(command, None, Duration::from_secs(120)).await;
    output.assert_success();
    println!("{}", output.stdout);

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
