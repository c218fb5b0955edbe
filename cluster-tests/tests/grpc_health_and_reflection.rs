//! Proves generic gRPC tooling can use a node without our proto files: the
//! standard health service reports SERVING, and server reflection lists and
//! describes the raftmq.v1 services (what grpcurl relies on).

use raftmq_cluster_tests::{CALL_TIMEOUT, READY_TIMEOUT, TestCluster, request_with_timeout};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// One request on the bidirectional reflection stream, one answer back.
async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let stream = tokio_stream::iter(vec![request]);
    let mut responses = client
        .server_reflection_info(request_with_timeout(stream, CALL_TIMEOUT))
        .await
        .expect("open the reflection stream")
        .into_inner();
    let response: ServerReflectionResponse = tokio::time::timeout(CALL_TIMEOUT, responses.message())
        .await
        .expect("reflection answers in time")
        .expect("read a reflection response")
        .expect("one reflection response");
    response.message_response.expect("the response carries an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_ready(READY_TIMEOUT).await;

    for node in cluster.node_ids() {
        let mut health = HealthClient::new(cluster.client(node).channel);
        for service in ["", "raftmq.v1.MessageService", "raftmq.v1.QueueService", "raftmq.v1.ClusterService"] {
            let check = HealthCheckRequest { service: service.to_string() };
            let response = health
                .check(request_with_timeout(check, CALL_TIMEOUT))
                .await
                .unwrap_or_else(|status| panic!("health check of {service:?} on node {node}: {status:?}"))
                .into_inner();
            assert_eq!(response.status(), ServingStatus::Serving, "node {node}, service {service:?}");
        }
    }

    let mut reflection = ServerReflectionClient::new(cluster.client(1).channel);
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut reflection, MessageRequest::ListServices(String::new())).await
    else {
        panic!("list_services answered with something else");
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    println!("reflection lists {services:?}");
    for expected in
        ["raftmq.v1.MessageService", "raftmq.v1.QueueService", "raftmq.v1.ClusterService", "grpc.health.v1.Health"]
    {
        assert!(services.iter().any(|s| s == expected), "reflection does not list {expected}: {services:?}");
    }

    let described =
        reflect(&mut reflection, MessageRequest::FileContainingSymbol("raftmq.v1.MessageService".to_string())).await;
    let MessageResponse::FileDescriptorResponse(files) = described else {
        panic!("file_containing_symbol raftmq.v1.MessageService answered with {described:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty(), "no descriptor for raftmq.v1.MessageService");
    // Serialized FileDescriptorProtos (the file and its dependencies); their
    // bytes hold the names as plain strings.
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .find(|text| text.contains("MessageService"))
        .expect("a descriptor defines MessageService");
    for name in ["raftmq.v1", "Produce", "Consume", "Ack"] {
        assert!(file.contains(name), "the MessageService descriptor does not mention {name}");
    }
}
