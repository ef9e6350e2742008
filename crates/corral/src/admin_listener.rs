//! The admin listener's connections: plain HTTP through `axum::serve`, or TLS
//! (`[admin] tls`, or `[cluster] tls`'s certificate) through the proxy's own TLS acceptor
//! (`corral_http::tls::ServerTls`: reload on change, optional client certificates, handshake
//! metrics as `corral_admin_tls_*`). Peers deliver events here, so with TLS on they are
//! verified by the same certificate as operators.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use corral_http::tls::ServerTls;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower_service::Service;

/// Serves `app` on `listener` until `stop` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<ServerTls>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let Some(tls) = tls else {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
        return;
    };
    tls.spawn_reloader();
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app) = (tls.clone(), app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some((stream, _)) = tls.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |mut req: http::Request<_>| {
                // What `into_make_service_with_connect_info` gives the plain listener's
                // handlers (purge_allow, peers' addresses).
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
