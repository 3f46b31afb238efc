//! The start of a request: what it carries (session id candidates, the
//! client's address and agent), and the loader that turns that into a
//! session on first use. Nothing here touches a store before the handler
//! asks for the session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ConnectInfo;
use axum_core::response::Response;
use http::header::USER_AGENT;
use http::{Method, Request};
use keepsake_core::{Error, Loader, Session, SessionFailure, SessionId, SessionStore};

use super::layer::{Binding, SessionLayer, SessionSource};
use super::service::{RequestInfo, error_response};
use crate::cookie;

/// At most this many well-formed ids of one request are tried against the
/// store. A browser can hold several cookies of the same name (a stale one
/// set for a parent `Domain`, another for a narrower `Path`) and sends them
/// all, in an order the server does not choose; trying only the first would
/// start a new session on every request. The bound keeps a request with a
/// header full of ids from costing more than a few loads.
pub(crate) const MAX_ID_CANDIDATES: usize = 3;

/// Loads the session of one request from what its cookie carried.
pub(super) struct RequestLoader {
    layer: Arc<SessionLayer>,
    /// Server stores: the distinct well-formed ids sent, in order, all from
    /// the same source.
    ids: [Option<SessionId>; MAX_ID_CANDIDATES],
    /// Client-side stores: every value of the session cookie, in order.
    sealed: Vec<Box<str>>,
    /// The request's fingerprint, when sessions are bound.
    fingerprint: Option<String>,
}

impl RequestLoader {
    /// A session bound to another fingerprint is invalidated.
    fn check_binding(&self, session: Session) -> Session {
        if let (Some(expected), Some(bound)) = (&self.fingerprint, session.binding())
            && *expected != bound
        {
            tracing::warn!(
                session = %session.storage_key().short(),
                "session presented by a different client than it is bound to; invalidating it"
            );
            session.invalidate();
        }
        session
    }
}

#[async_trait]
impl Loader for RequestLoader {
    async fn load(&self) -> Result<Session, Error> {
        let store: &dyn SessionStore = &*self.layer.store;
        if let Some(client) = store.client_side() {
            let opened = self.sealed.iter().find_map(|value| client.open(value));
            return Ok(opened.map_or_else(Session::new_detached, |(id, record)| {
                self.check_binding(Session::from_loaded(id, record))
            }));
        }
        for id in self.ids.iter().flatten() {
            if let Some(record) = store.load(&id.storage_key()).await? {
                return Ok(self.check_binding(Session::from_loaded(id.clone(), record)));
            }
            tracing::debug!(session = %id, "unknown or expired session id");
        }
        if self.ids[0].is_some() {
            tracing::debug!("no session id of the request loads; starting a new session");
        }
        Ok(Session::new_detached())
    }

    fn error_response(&self, error: &SessionFailure) -> Response {
        error_response(&self.layer.config, error)
    }
}

/// Reads what the request carries; touches no store.
pub(super) fn start<B>(
    layer: &Arc<SessionLayer>,
    request: &Request<B>,
) -> (RequestLoader, RequestInfo) {
    let config = &layer.config;
    let headers = request.headers();
    let client_side = layer.store.client_side().is_some();

    // Server stores take the well-formed ids of the first source (in
    // precedence order) that sent one, up to a bound; a client-side store
    // tries every value it was sent. The common request parses one id and
    // builds no list.
    let mut ids: [Option<SessionId>; MAX_ID_CANDIDATES] = Default::default();
    let mut sealed = Vec::new();
    let mut source = SessionSource::None;
    let mut had_id = false;
    let mut consider = |origin: SessionSource, value: &[u8]| {
        had_id = true;
        if client_side {
            if source == SessionSource::None {
                source = origin;
            }
            sealed.push(Box::<str>::from(cookie::text(value)));
            return;
        }
        if source != SessionSource::None && source != origin {
            return;
        }
        let Some(free) = ids.iter().position(Option::is_none) else {
            return;
        };
        if let Some(parsed) = SessionId::parse_bytes(value)
            && !ids.iter().flatten().any(|known| *known == parsed)
        {
            ids[free] = Some(parsed);
            source = origin;
        }
    };
    let order = match config.precedence {
        SessionSource::Cookie => [SessionSource::Cookie, SessionSource::Header],
        _ => [SessionSource::Header, SessionSource::Cookie],
    };
    for origin in order {
        match origin {
            SessionSource::Cookie if config.use_cookie => {
                for value in cookie::values(headers, &config.cookie_name) {
                    consider(origin, value);
                }
            }
            SessionSource::Header => {
                if let Some(name) = &config.id_header {
                    let values = headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .map(str::trim)
                        .filter(|v| !v.is_empty());
                    for value in values {
                        consider(origin, value.as_bytes());
                    }
                }
            }
            _ => {}
        }
    }
    if had_id && !client_side && ids[0].is_none() {
        tracing::warn!(
            cookie = %config.cookie_name,
            "malformed session id ignored; a new session will be started"
        );
    }

    let previous_url = (config.track_previous_url
        && request.method() == Method::GET
        && headers
            .get("x-requested-with")
            .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest")))
    .then(|| request.uri().to_string());

    let (ip, user_agent) = if config.record_client || config.binding.is_enabled() {
        let forwarded = config
            .trusted_proxies
            .and_then(|trust| trust.client_ip(headers));
        let ip = forwarded.or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
        });
        let agent = headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect());
        (ip, agent)
    } else {
        (None, None)
    };

    let fingerprint = config
        .binding
        .is_enabled()
        .then(|| fingerprint(config.binding, ip, user_agent.as_deref()));
    let (ip_address, user_agent) = if config.record_client {
        (ip.map(|ip| ip.to_string()), user_agent)
    } else {
        (None, None)
    };
    let loader = RequestLoader {
        layer: Arc::clone(layer),
        ids,
        sealed,
        fingerprint: fingerprint.clone(),
    };
    let info = RequestInfo {
        source,
        fingerprint,
        previous_url,
        ip_address,
        user_agent,
    };
    (loader, info)
}

/// The hex SHA-256 of what the session is bound to.
fn fingerprint(binding: Binding, ip: Option<IpAddr>, agent: Option<&str>) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    if binding.user_agent {
        hasher.update(b"ua:");
        hasher.update(agent.unwrap_or_default().as_bytes());
    }
    if binding.ipv4_prefix.is_some() || binding.ipv6_prefix.is_some() {
        hasher.update(b"|ip:");
        let masked = ip.map(|ip| match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(binding.ipv4_prefix.unwrap_or(32).min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u32::from(binding.ipv6_prefix.unwrap_or(128).min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        });
        hasher.update(
            masked
                .map(|ip| ip.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    hex::encode(&hasher.finalize()[..16])
}
