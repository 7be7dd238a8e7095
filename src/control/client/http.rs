//! The CLI's side of the control socket: HTTP/1.1 over the Unix socket
//! (hyper's client connection on a tokio `UnixStream`, on a current-thread
//! runtime), one request a connection.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

/// Why no answer came, or what op25b said no to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nobody answers at the socket.
    #[error("no op25b answers at {path}: {cause} (is `op25b run` running with [control] socket = {path:?}? OP25B_SOCKET or --socket names another)")]
    Connect {
        /// The socket.
        path: String,
        /// The cause (in the message, not a `source()`: a chain prints it once).
        cause: std::io::Error,
    },
    /// The answer was cut, late, or is not what op25b sends.
    #[error("bad answer from {path}: {why}")]
    Answer {
        /// The socket.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// op25b answered with an error: the request was bad (400) or refused.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// op25b's one line.
        message: String,
        /// The whole answer.
        body: serde_json::Value,
    },
}

impl ClientError {
    /// The exit status it gives: 2 for a usage error (op25b said 400: a bad
    /// request) or when nobody answers at the socket, 1 otherwise.
    pub fn exit_code(&self) -> std::process::ExitCode {
        match self {
            ClientError::Connect { .. } | ClientError::Refused { status: 400, .. } => std::process::ExitCode::from(2),
            _ => std::process::ExitCode::FAILURE,
        }
    }
}

/// How long a request may take, a reload included (reading and compiling a
/// large config).
const TIMEOUT: Duration = Duration::from_secs(60);

fn runtime(path: &str) -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| ClientError::Answer { path: path.to_string(), why: format!("cannot start the client: {e}") })
}

/// Sends one request and returns the response, its body still to read.
async fn send(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<&serde_json::Value>,
) -> Result<hyper::Response<Incoming>, ClientError> {
    let path = socket.display().to_string();
    let bad = |why: String| ClientError::Answer { path: path.clone(), why };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|cause| ClientError::Connect { path: path.clone(), cause })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| bad(e.to_string()))?;
    tokio::spawn(async move {
        // Its error, if any, is the one send_request or the body reports.
        let _ = conn.await;
    });
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let request = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "op25b")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes))
        .map_err(|e| bad(e.to_string()))?;
    sender.send_request(request).await.map_err(|e| bad(e.to_string()))
}

/// The error of a non-2xx answer, from its `{"error": ..}` body.
fn refused(status: u16, body: serde_json::Value) -> ClientError {
    let message = body["error"].as_str().map_or_else(|| format!("HTTP {status}: {body}"), str::to_string);
    ClientError::Refused { status, message, body }
}

/// `method uri` with an optional JSON body; the JSON answer of a 2xx, or the error.
pub fn request(
    socket: &Path,
    method: &'static str,
    uri: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, ClientError> {
    let path = socket.display().to_string();
    let call = Call { socket, method, uri: uri.to_string(), body: body.cloned() };
    runtime(&path)?.block_on(exchange(&call))
}

/// One request of [`request_each`].
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The control socket.
    pub socket: &'a Path,
    /// GET or POST.
    pub method: &'static str,
    /// The path and query.
    pub uri: String,
    /// The JSON body, if any.
    pub body: Option<serde_json::Value>,
}

/// Each call's request, all at once; the answers in the order of `calls`.
/// A slow or silent op25b delays only its own answer, up to the timeout.
pub fn request_each(calls: &[Call<'_>]) -> Vec<Result<serde_json::Value, ClientError>> {
    let rt = match runtime("the control sockets") {
        Ok(rt) => rt,
        Err(e) => {
            let why = e.to_string();
            return calls
                .iter()
                .map(|c| Err(ClientError::Answer { path: c.socket.display().to_string(), why: why.clone() }))
                .collect();
        }
    };
    rt.block_on(futures_util::future::join_all(calls.iter().map(exchange)))
}

/// One exchange, bounded by [`TIMEOUT`].
async fn exchange(call: &Call<'_>) -> Result<serde_json::Value, ClientError> {
    let path = call.socket.display().to_string();
    let bad = |why: String| ClientError::Answer { path: path.clone(), why };
    let exchange = async {
        let response = send(call.socket, call.method, &call.uri, call.body.as_ref()).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| bad(e.to_string()))?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(refused(status, v))
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(bad(format!("no answer within {} s", TIMEOUT.as_secs()))))
}

/// `GET uri` of a stream of lines: calls `each` with every line as it
/// arrives (false from `each` ends it) until the stream ends.
pub fn follow(socket: &Path, uri: &str, mut each: impl FnMut(&str) -> bool) -> Result<(), ClientError> {
    let path = socket.display().to_string();
    let bad = |why: String| ClientError::Answer { path: path.clone(), why };
    runtime(&path)?.block_on(async {
        let response = tokio::time::timeout(TIMEOUT, send(socket, "GET", uri, None))
            .await
            .unwrap_or_else(|_| Err(bad(format!("no answer within {} s", TIMEOUT.as_secs()))))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if !(200..300).contains(&status) {
            let bytes = body.collect().await.map_err(|e| bad(e.to_string()))?.to_bytes();
            return Err(refused(status, serde_json::from_slice(&bytes).unwrap_or_default()));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !each(String::from_utf8_lossy(&line[..end]).as_ref()) {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}
