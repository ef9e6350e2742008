//! A scripted HTTP/1.1 origin on loopback for process-level tests: each test says what it
//! answers ([`Reply`], per request or changed mid-test with [`Origin::set`]), and reads back
//! what reached it ([`Seen`]) and how many connections it accepted and saw end ([`Conns`]),
//! so a test observes the gateway's behaviour at the origin instead of guessing it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// What the origin answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Stream this many bytes in 64 KiB chunks instead of `body` (for huge bodies).
    pub stream_len: Option<u64>,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: body.into(),
            delay: Duration::ZERO,
            stream_len: None,
        }
    }
    pub fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }
    pub fn header(mut self, n: &str, v: &str) -> Reply {
        self.headers.push((n.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn stream(mut self, n: u64) -> Reply {
        self.stream_len = Some(n);
        self
    }
}

/// A request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A real HTTP origin on loopback.
pub struct Origin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Mutex<Handler>>,
    conns: Arc<Conns>,
}

/// TCP connections the origin accepted, and how many of them have ended (closed by either side).
#[derive(Debug, Default)]
pub struct Conns {
    pub accepted: std::sync::atomic::AtomicUsize,
    pub closed: std::sync::atomic::AtomicUsize,
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        Self::start_on("127.0.0.1:0", handler).await
    }

    pub async fn start_on(
        addr: &str,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let conns: Arc<Conns> = Arc::default();
        let (s, h, c) = (seen.clone(), handler.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (s, h, c) = (s.clone(), h.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (s, h) = (s.clone(), h.clone());
                        async move { Ok::<_, Infallible>(answer(req, &s, &h).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    c.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Origin {
            addr,
            seen,
            handler,
            conns,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections that have ended so far.
    pub fn closed(&self) -> usize {
        self.conns.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the handler.
    pub fn set(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// Requests seen whose path and query start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.starts_with(prefix))
            .count()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self, prefix: &str) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.uri.starts_with(prefix))
            .cloned()
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: http::Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    handler: &Mutex<Handler>,
) -> http::Response<OriginBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body_len = body.len();
    let s = Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        headers: parts.headers,
        body_len,
        body,
    };
    seen.lock().unwrap().push(s.clone());
    let h = handler.lock().unwrap().clone();
    let reply = h(&s);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut b = http::Response::builder().status(reply.status);
    for (n, v) in &reply.headers {
        b = b.header(n, v);
    }
    let body: OriginBody = match reply.stream_len {
        Some(n) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
        None => BodyExt::boxed(Full::new(reply.body)),
    };
    b.body(body).unwrap()
}
