//! `raftmq.v1.QueueService`: the queue catalog and per-queue statistics.
//!
//! Create and delete are meta-group writes, proposed on the meta leader.
//! Get and list answer from this node's catalog; statistics come from a
//! replica and say which node computed them and at which applied index.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::v1::queue_service_client::QueueServiceClient;
use raftmq_proto::v1::queue_service_server::QueueService;
use raftmq_proto::v1::{
    CreateQueueRequest, CreateQueueResponse, CreateSubscriptionRequest, CreateSubscriptionResponse, DeleteQueueRequest,
    DeleteQueueResponse, DeleteSubscriptionRequest, DeleteSubscriptionResponse, GetQueueRequest, GetQueueResponse,
    ListQueuesRequest, ListQueuesResponse, ListSubscriptionsRequest, ListSubscriptionsResponse, PurgeQueueRequest,
    PurgeQueueResponse, QueueStats, RedriveRequest, RedriveResponse, SeekRequest, SeekResponse,
    SubscriptionStart as PbSubscriptionStart, UpdateQueueRequest, UpdateQueueResponse, seek_request,
};
use raftmq_raft::QueueGroup;
use raftmq_types::{
    MetaCommand, MetaResponse, NodeId, Offset, QueueCommand, QueueName, QueueRequest, QueueResponse, SeekTarget,
    SubscriptionName, SubscriptionStart, TimestampMs,
};
use tonic::{Request, Response, Status};

use crate::clock;
use crate::convert;
use crate::dead_letters;
use crate::error::ApiError;
use crate::grpc::message_service::{MessageServiceImpl, subscription_name};
use crate::routing::{CallContext, Router, propose};

pub struct QueueServiceImpl {
    router: Arc<Router>,
    /// Redrive moves messages through the message handlers.
    messages: Arc<MessageServiceImpl>,
}

impl QueueServiceImpl {
    pub fn new(router: Arc<Router>, messages: Arc<MessageServiceImpl>) -> Self {
        QueueServiceImpl { router, messages }
    }

    fn stats(&self, group: &QueueGroup) -> QueueStats {
        let stats = group.reader.state().stats(clock::now());
        let metrics = group.raft.metrics();
        let metrics = metrics.borrow_watched();
        QueueStats {
            depth: stats.depth,
            in_flight: stats.in_flight,
            delayed: stats.delayed,
            available: stats.available,
            next_offset: stats.next_offset.0,
            leader_id: metrics.current_leader.unwrap_or(0),
            applied_index: metrics.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
            reported_by: self.router.node_id(),
            dedup_ids: stats.dedup_ids,
            bytes: stats.bytes,
            dead: stats.dead,
            retained: stats.retained,
            retained_bytes: stats.retained_bytes,
            subscriptions: stats.subscriptions,
        }
    }

    /// Statistics from the local replica, if this node holds one.
    fn local_info(&self, name: &QueueName) -> Option<raftmq_proto::v1::QueueInfo> {
        let entry = self.router.catalog_entry(name)?;
        let stats = self.router.groups().queue_group(entry.group_id).map(|g| self.stats(&g));
        Some(convert::queue_info(name, &entry, stats))
    }

    /// Picks replicas for a new queue: the nodes hosting the fewest queues, so
    /// that queues (and, through elections, leaders) spread over the cluster.
    fn choose_replicas(&self, replication_factor: u32) -> Vec<NodeId> {
        let members: Vec<NodeId> = self.router.groups().members().into_keys().collect();
        let catalog = self.router.groups().catalog();
        let mut load: Vec<(usize, NodeId)> = members
            .iter()
            .map(|id| (catalog.queues.values().filter(|q| q.replicas.contains(id)).count(), *id))
            .collect();
        load.sort();
        let mut replicas: Vec<NodeId> = load.into_iter().take(replication_factor as usize).map(|(_, id)| id).collect();
        replicas.sort();
        replicas
    }

    /// The queue as a create or update left it: the meta leader's answer when
    /// the call was forwarded, else this node's catalog, which holds the
    /// change because this node is the meta leader that applied it.
    fn after_meta_change(
        &self,
        name: &QueueName,
        forwarded: Option<raftmq_proto::v1::QueueInfo>,
    ) -> Result<raftmq_proto::v1::QueueInfo, Status> {
        match forwarded {
            Some(info) => Ok(info),
            None => self
                .local_info(name)
                .ok_or_else(|| ApiError::Internal(format!("queue {name} missing from the catalog after apply")).into()),
        }
    }
}

fn queue_name(name: &str) -> Result<QueueName, Status> {
    QueueName::new(name).map_err(|e| ApiError::from(e).into())
}

#[tonic::async_trait]
impl QueueService for QueueServiceImpl {
    async fn create_queue(
        &self,
        request: Request<CreateQueueRequest>,
    ) -> Result<Response<CreateQueueResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let name = queue_name(&request.name)?;
        let config = convert::queue_config(request.config.as_ref())?;
        config.validate().map_err(ApiError::from)?;
        let members = self.router.groups().members().len() as u32;
        let mut config = config;
        config.replication_factor = config.replication_factor.min(members.max(1));
        let replicas = self.choose_replicas(config.replication_factor);
        let command = MetaCommand::CreateQueue { name: name.clone(), config, replicas, now: clock::now() };
        let created = self
            .router
            .on_meta_leader(
                ctx,
                command,
                |response| match response {
                    MetaResponse::QueueCreated { .. } => Ok(None),
                    MetaResponse::QueueAlreadyExists { .. } => Err(ApiError::QueueAlreadyExists(name.to_string())),
                    MetaResponse::ConfigRejected { reason } => {
                        Err(ApiError::InvalidArgument(format!("config: {reason}")))
                    }
                    other => Err(ApiError::Internal(format!("unexpected meta response {other:?}"))),
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(QueueServiceClient::new(channel).create_queue(request).await?.into_inner().queue) }
                },
            )
            .await?;
        Ok(Response::new(CreateQueueResponse { queue: Some(self.after_meta_change(&name, created)?) }))
    }

    async fn get_queue(&self, request: Request<GetQueueRequest>) -> Result<Response<GetQueueResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let name = queue_name(&request.name)?;
        if let Some(info) = self.local_info(&name)
            && (info.stats.is_some() || !ctx.can_forward())
        {
            return Ok(Response::new(GetQueueResponse { queue: Some(info) }));
        }
        // No replica here (or the catalog trails): ask the queue's leader.
        let info = self
            .router
            .on_queue_leader(
                ctx,
                &name,
                |group, entry| {
                    let info = convert::queue_info(&name, &entry, Some(self.stats(&group)));
                    async move { Ok(info) }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move {
                        let response = QueueServiceClient::new(channel).get_queue(request).await?;
                        response
                            .into_inner()
                            .queue
                            .ok_or_else(|| Status::internal("forwarded GetQueue returned no queue"))
                    }
                },
            )
            .await?;
        Ok(Response::new(GetQueueResponse { queue: Some(info) }))
    }

    async fn list_queues(&self, _request: Request<ListQueuesRequest>) -> Result<Response<ListQueuesResponse>, Status> {
        let catalog = self.router.groups().catalog();
        let queues = catalog
            .queues
            .iter()
            .map(|(name, entry)| {
                let stats = self.router.groups().queue_group(entry.group_id).map(|g| self.stats(&g));
                convert::queue_info(name, entry, stats)
            })
            .collect();
        Ok(Response::new(ListQueuesResponse { queues }))
    }

    async fn delete_queue(
        &self,
        request: Request<DeleteQueueRequest>,
    ) -> Result<Response<DeleteQueueResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let name = queue_name(&request.name)?;
        self.router
            .on_meta_leader(
                ctx,
                MetaCommand::DeleteQueue { name: name.clone() },
                |response| match response {
                    MetaResponse::QueueDeleted { .. } => Ok(()),
                    MetaResponse::QueueNotFound => Err(ApiError::QueueNotFound(name.to_string())),
                    MetaResponse::QueueInUse { used_by } => Err(ApiError::FailedPrecondition(format!(
                        "queue {name} is the dead-letter queue of {used_by}; change that queue's dead_letter_queue first"
                    ))),
                    other => Err(ApiError::Internal(format!("unexpected meta response {other:?}"))),
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move {
                        QueueServiceClient::new(channel).delete_queue(request).await?;
                        Ok(())
                    }
                },
            )
            .await?;
        Ok(Response::new(DeleteQueueResponse {}))
    }

    async fn update_queue(
        &self,
        request: Request<UpdateQueueRequest>,
    ) -> Result<Response<UpdateQueueResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let name = queue_name(&request.name)?;
        let update = convert::queue_config_update(&request.update.clone().unwrap_or_default())?;
        if update.is_empty() {
            return Err(ApiError::InvalidArgument("update: set at least one setting to change".into()).into());
        }
        let command = MetaCommand::UpdateQueue { name: name.clone(), update };
        let updated = self
            .router
            .on_meta_leader(
                ctx,
                command,
                |response| match response {
                    MetaResponse::QueueUpdated { .. } => Ok(None),
                    MetaResponse::QueueNotFound => Err(ApiError::QueueNotFound(name.to_string())),
                    MetaResponse::ConfigRejected { reason } => {
                        Err(ApiError::InvalidArgument(format!("update: {reason}")))
                    }
                    other => Err(ApiError::Internal(format!("unexpected meta response {other:?}"))),
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(QueueServiceClient::new(channel).update_queue(request).await?.into_inner().queue) }
                },
            )
            .await?;
        Ok(Response::new(UpdateQueueResponse { queue: Some(self.after_meta_change(&name, updated)?) }))
    }

    async fn purge_queue(&self, request: Request<PurgeQueueRequest>) -> Result<Response<PurgeQueueResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let name = queue_name(&request.name)?;
        let removed = self
            .router
            .on_queue_leader(
                ctx,
                &name,
                |group, _entry| async move {
                    match propose(&group, QueueRequest { now: clock::now(), command: QueueCommand::Purge }).await? {
                        QueueResponse::Purged { removed } => Ok(removed),
                        other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
                    }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(QueueServiceClient::new(channel).purge_queue(request).await?.into_inner().removed) }
                },
            )
            .await?;
        Ok(Response::new(PurgeQueueResponse { removed }))
    }

    async fn redrive(&self, request: Request<RedriveRequest>) -> Result<Response<RedriveResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let name = queue_name(&request.queue)?;
        // Leave time for the answer and for giving back what could not move.
        let deadline = ctx.deadline.checked_sub(Duration::from_millis(500)).unwrap_or(ctx.deadline);
        let response =
            dead_letters::redrive(&self.router, &self.messages, &name, request.max_messages, deadline).await?;
        Ok(Response::new(response))
    }

    async fn create_subscription(
        &self,
        request: Request<CreateSubscriptionRequest>,
    ) -> Result<Response<CreateSubscriptionResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let name = SubscriptionName::new(&request.name)
            .map_err(|e| Status::from(ApiError::InvalidArgument(format!("name: {e}"))))?;
        let start = match PbSubscriptionStart::try_from(request.start) {
            Ok(PbSubscriptionStart::Latest) => SubscriptionStart::Latest,
            Ok(PbSubscriptionStart::Earliest) => SubscriptionStart::Earliest,
            Err(_) => {
                return Err(ApiError::InvalidArgument(format!(
                    "start: unknown value {}; use SUBSCRIPTION_START_LATEST (0) or SUBSCRIPTION_START_EARLIEST (1)",
                    request.start
                ))
                .into());
            }
        };
        let subscription = self
            .router
            .on_queue_leader(
                ctx,
                &queue,
                |group, _entry| {
                    let (queue, name) = (&queue, &name);
                    async move {
                        let command = QueueCommand::CreateSubscription { name: name.clone(), start };
                        match propose(&group, QueueRequest { now: clock::now(), command }).await? {
                            QueueResponse::SubscriptionCreated { .. } => {
                                let subscriptions = group.reader.state().subscriptions(clock::now());
                                let created = subscriptions.iter().find(|s| s.name == *name).ok_or_else(|| {
                                    ApiError::Internal(format!("subscription {name} missing after its creation"))
                                })?;
                                Ok(convert::subscription_pb(created))
                            }
                            QueueResponse::SubscriptionExists { .. } => Err(ApiError::AlreadyExists(format!(
                                "queue {queue:?} already has a subscription \"{name}\""
                            ))
                            .into()),
                            QueueResponse::TooManySubscriptions { max } => Err(ApiError::QueueFull(format!(
                                "queue {queue:?} has {max} subscriptions, the most a queue may have; delete one first"
                            ))
                            .into()),
                            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
                        }
                    }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move {
                        let response = QueueServiceClient::new(channel).create_subscription(request).await?;
                        Ok(response.into_inner().subscription.unwrap_or_default())
                    }
                },
            )
            .await?;
        Ok(Response::new(CreateSubscriptionResponse { subscription: Some(subscription) }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<ListSubscriptionsRequest>,
    ) -> Result<Response<ListSubscriptionsResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let response = self
            .router
            .on_queue_leader(
                ctx,
                &queue,
                |group, _entry| async move {
                    let subscriptions = group.reader.state().subscriptions(clock::now());
                    Ok(ListSubscriptionsResponse {
                        subscriptions: subscriptions.iter().map(convert::subscription_pb).collect(),
                    })
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(QueueServiceClient::new(channel).list_subscriptions(request).await?.into_inner()) }
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn delete_subscription(
        &self,
        request: Request<DeleteSubscriptionRequest>,
    ) -> Result<Response<DeleteSubscriptionResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let name = SubscriptionName::new(&request.name)
            .map_err(|e| Status::from(ApiError::InvalidArgument(format!("name: {e}"))))?;
        self.router
            .on_queue_leader(
                ctx,
                &queue,
                |group, entry| {
                    let (queue, name) = (&queue, &name);
                    async move {
                        let command = QueueCommand::DeleteSubscription {
                            name: name.clone(),
                            retention: entry.config.retention(),
                        };
                        match propose(&group, QueueRequest { now: clock::now(), command }).await? {
                            QueueResponse::SubscriptionDeleted { .. } => Ok(()),
                            QueueResponse::SubscriptionNotFound => Err(ApiError::SubscriptionNotFound {
                                queue: queue.to_string(),
                                subscription: name.clone(),
                            }
                            .into()),
                            QueueResponse::DefaultSubscription => Err(ApiError::FailedPrecondition(format!(
                                "\"{name}\" is the subscription every queue has and cannot be deleted; \
                                 delete the queue, or purge it"
                            ))
                            .into()),
                            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
                        }
                    }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move {
                        QueueServiceClient::new(channel).delete_subscription(request).await?;
                        Ok(())
                    }
                },
            )
            .await?;
        Ok(Response::new(DeleteSubscriptionResponse {}))
    }

    async fn seek(&self, request: Request<SeekRequest>) -> Result<Response<SeekResponse>, Status> {
        let ctx = CallContext::from_metadata(request.metadata());
        let request = request.into_inner();
        let queue = queue_name(&request.queue)?;
        let subscription = subscription_name(&request.subscription)?;
        let target = match request.target {
            Some(seek_request::Target::Offset(offset)) => SeekTarget::Offset(Offset(offset)),
            Some(seek_request::Target::TimeMs(time)) => SeekTarget::Time(TimestampMs(time)),
            None => {
                return Err(ApiError::InvalidArgument("target: set offset or time_ms".to_string()).into());
            }
        };
        let pending = self
            .router
            .on_queue_leader(
                ctx,
                &queue,
                |group, entry| {
                    let (queue, subscription) = (&queue, &subscription);
                    async move {
                        let retention = entry.config.retention();
                        let command = QueueCommand::Seek { subscription: subscription.clone(), target, retention };
                        match propose(&group, QueueRequest { now: clock::now(), command }).await? {
                            QueueResponse::Sought { pending } => Ok(pending),
                            QueueResponse::SubscriptionNotFound => Err(ApiError::SubscriptionNotFound {
                                queue: queue.to_string(),
                                subscription: subscription.clone(),
                            }
                            .into()),
                            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
                        }
                    }
                },
                |channel, ctx| {
                    let request = ctx.forward(request.clone());
                    async move { Ok(QueueServiceClient::new(channel).seek(request).await?.into_inner().pending) }
                },
            )
            .await?;
        Ok(Response::new(SeekResponse { pending }))
    }
}
