//! The gate in front of the service: which call is this, may this caller make it, and how long
//! may it take.
//!
//! It wraps the whole generated service as one tower service per connection, so no handler can
//! forget the role check: a request is matched by path against [`Rpc`], checked with
//! [`Caller::may_call`] for the connection's client, and only then handed on, with a deadline on
//! its response. Paths that
//! name no call go on unchecked to the generated service, which answers UNIMPLEMENTED without
//! reaching the device.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::{Code, Status};

use crate::admission::{Activity, Tracked};
use crate::{Caller, Limits, Log, Rpc};

#[derive(Clone)]
pub(crate) struct Policy<S> {
    inner: S,
    /// The connection's client: one Policy serves one connection.
    caller: Caller,
    deadline: Duration,
    max_message: usize,
    log: Log,
    /// Calls in flight on the connection, for its idle timeout.
    activity: std::sync::Arc<Activity>,
}

impl<S> Policy<S> {
    pub(crate) fn new(
        inner: S,
        caller: Caller,
        limits: &Limits,
        log: Log,
        activity: std::sync::Arc<Activity>,
    ) -> Policy<S> {
        Policy {
            inner,
            caller,
            deadline: limits.call_deadline,
            max_message: limits.max_message,
            log,
            activity,
        }
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S, B> Service<http::Request<B>> for Policy<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> ResponseFuture {
        let rpc = Rpc::from_path(request.uri().path());
        if let Some(rpc) = rpc {
            if let Err(denied) = authorize(rpc, &self.caller, &self.log) {
                self.activity.touch();
                return Box::pin(std::future::ready(Ok(denied.into_http())));
            }
        }
        // Counted from here until the client has the whole response (a stream's end).
        let call = self.activity.call();
        // The service that was polled ready is the one that is called; the clone waits for the
        // next request (tower's usual dance; the generated service is always ready).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let deadline = self.deadline;
        let max_message = self.max_message;
        Box::pin(async move {
            match tokio::time::timeout(deadline, inner.call(request)).await {
                Ok(Ok(response)) => {
                    Ok(name_oversize(response, max_message).map(|body| Tracked::wrap(body, call)))
                }
                Ok(Err(never)) => match never {},
                Err(_) => {
                    let what = rpc.map_or("the call", Rpc::name);
                    Ok(Status::deadline_exceeded(format!(
                        "{what} got no answer from the device within its {} s deadline",
                        deadline.as_secs_f32()
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE and its own wording; gRPC's
/// code for it is RESOURCE_EXHAUSTED, and the client should hear what the limit is.
fn name_oversize(response: http::Response<Body>, max_message: usize) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if is_oversize(&status) => oversize(max_message).into_http(),
        _ => response,
    }
}

pub(crate) fn is_oversize(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

pub(crate) fn oversize(max_message: usize) -> Status {
    Status::resource_exhausted(format!(
        "a message is over the device's limit of {max_message} bytes (upload chunks: at most 1 MiB)"
    ))
}

/// Checks the role table; a denial is logged with the certificate's subject. Allowed calls
/// that change the device are logged too: the audit trail of who did what.
fn authorize(rpc: Rpc, caller: &Caller, log: &Log) -> Result<(), Status> {
    match caller.may_call(rpc) {
        Ok(()) => {
            if rpc.changes_device() {
                log(&format!("{rpc} by {caller}"));
            }
            Ok(())
        }
        Err(why) => {
            log(&format!(
                "denied {rpc} to {caller}: needs the {} role",
                rpc.required()
            ));
            Err(Status::permission_denied(why))
        }
    }
}
