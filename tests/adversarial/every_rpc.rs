//! Every one of the 59 RPCs, driven from `rpcs::RPCS` so no RPC can be left out: called with no
//! token and with a forged token, each must answer `Unauthenticated` (Login and ChangePassword:
//! their own refusal of an empty request) and change nothing. Requests are sent as an empty message
//! (the default of every request type), so one generic call reaches every method, streams included.

use futures::StreamExt as _;
use http::uri::PathAndQuery;
use taskqueue::rpcs::{self, Access, Kind};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

use crate::common::replica;
use crate::guard::{Guard, refused};

/// Calls `rpc` with an empty request and `token`, and returns the outcome (a stream's first item
/// counts for server streams).
pub async fn call(
    channel: tonic::transport::Channel,
    rpc: &rpcs::Rpc,
    token: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(format!("/{}/{}", rpcs::SERVICE, rpc.name)).unwrap();
    let codec = ProstCodec::<(), ()>::default();
    fn with_token<T>(mut req: Request<T>, token: Option<&str>) -> Request<T> {
        if let Some(t) = token {
            let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
            req.metadata_mut().insert("authorization", v);
        }
        req
    }
    match rpc.kind {
        Kind::Unary => grpc
            .unary(with_token(Request::new(()), token), path, codec)
            .await
            .map(|_| ()),
        Kind::ClientStream => {
            let items = futures::stream::iter(vec![()]);
            grpc.client_streaming(with_token(Request::new(items), token), path, codec)
                .await
                .map(|_| ())
        }
        Kind::ServerStream => {
            let mut stream = grpc
                .server_streaming(with_token(Request::new(()), token), path, codec)
                .await?
                .into_inner();
            match tokio::time::timeout(std::time::Duration::from_secs(2), stream.next()).await {
                Ok(Some(Err(e))) => Err(e),
                _ => Ok(()),
            }
        }
    }
}

#[tokio::test]
async fn no_token_and_forged_tokens_on_every_rpc() {
    let r = replica().await;
    let guard = Guard::new(&r).await;
    let forged = ["0".repeat(64), "worker-token-for-tests ".repeat(3)];
    for rpc in rpcs::RPCS {
        let expected = match rpc.access {
            Access::Public => Code::InvalidArgument,
            _ => Code::Unauthenticated,
        };
        // A token-less SendTaskLogs is the original worker's way (only for held tasks); an empty
        // line names task 0, which no worker holds.
        refused(
            call(r.channel(), rpc, None).await,
            expected,
            &format!("{} without a token", rpc.name),
        );
        if rpc.access == Access::Public {
            continue;
        }
        for token in &forged {
            refused(
                call(r.channel(), rpc, Some(token)).await,
                Code::Unauthenticated,
                &format!("{} with a forged token", rpc.name),
            );
        }
    }
    guard
        .assert_unchanged("every RPC without a valid token")
        .await;
}
