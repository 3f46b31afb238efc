//! [`SessionLayer`]: the builder and its one place of defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum_core::response::Response;
use http::HeaderName;
use keepsake_core::{CommitLocks, SessionFailure, SessionStore};
use tower_layer::Layer;

use super::proxy::TrustedProxies;
use super::service::SessionService;
use crate::cookie as session_cookie;

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SameSite {
    /// Sent on same-site requests and top-level cross-site navigations (GET).
    Lax,
    /// Sent on same-site requests only.
    Strict,
    /// Sent everywhere; browsers require `Secure` with it.
    None,
}

impl From<SameSite> for cookie::SameSite {
    fn from(value: SameSite) -> Self {
        match value {
            SameSite::Lax => Self::Lax,
            SameSite::Strict => Self::Strict,
            SameSite::None => Self::None,
        }
    }
}

/// Where the session id of a request came from. The layer puts it into the
/// request extensions, so inner middleware can tell a browser's cookie from an
/// API client's header (the CSRF check skips header-carried sessions: a
/// browser cannot attach a custom header to a cross-site request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionSource {
    /// The session cookie.
    Cookie,
    /// The id header ([`SessionLayer::with_id_header`]).
    Header,
    /// No id was sent: a new session, if one is started.
    None,
}

/// What a session is bound to (hijacking mitigation, off by default): a
/// session presented with another fingerprint than the one it was bound to is
/// invalidated and a fresh one started, with a `warn` log.
///
/// Binding to the client address breaks sessions of users whose address
/// changes (mobile networks, IPv6 privacy addresses, some corporate proxies),
/// so choose a prefix rather than the whole address; binding to the user
/// agent breaks sessions across browser updates. Both only raise the bar for
/// a stolen cookie: an attacker who can read the cookie can often copy the
/// user agent too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Binding {
    /// Bind to the `User-Agent` header.
    pub user_agent: bool,
    /// Bind to the first this-many bits of an IPv4 client address (e.g. 24).
    pub ipv4_prefix: Option<u8>,
    /// Bind to the first this-many bits of an IPv6 client address (e.g. 64).
    pub ipv6_prefix: Option<u8>,
}

impl Binding {
    /// Binds to the user agent only.
    #[must_use]
    pub fn user_agent() -> Self {
        Self {
            user_agent: true,
            ..Self::default()
        }
    }

    /// Also binds to the client address: its first `ipv4` bits (IPv4) or
    /// `ipv6` bits (IPv6). The address comes from axum's `ConnectInfo`, or
    /// from the forwarding header of
    /// [trusted proxies](SessionLayer::with_trusted_proxies).
    #[must_use]
    pub fn with_ip_prefix(mut self, ipv4: u8, ipv6: u8) -> Self {
        self.ipv4_prefix = Some(ipv4.min(32));
        self.ipv6_prefix = Some(ipv6.min(128));
        self
    }

    pub(crate) fn is_enabled(self) -> bool {
        self.user_agent || self.ipv4_prefix.is_some() || self.ipv6_prefix.is_some()
    }
}

/// Makes the response for a session failure (a store outage, a save that
/// kept conflicting). The failure is attached to the response extensions
/// whatever the handler returns.
pub type ErrorHandler = Arc<dyn Fn(&SessionFailure) -> Response + Send + Sync>;

/// Everything the layer is configured with. Built through [`SessionLayer`]'s
/// `with_*` methods; the defaults are in one place, `impl Default`.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) cookie_name: String,
    pub(crate) cookie_path: String,
    pub(crate) cookie_domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) partitioned: bool,
    pub(crate) same_site: SameSite,
    pub(crate) idle_lifetime: Duration,
    pub(crate) absolute_lifetime: Option<Duration>,
    pub(crate) expire_on_close: bool,
    pub(crate) touch_after: Duration,
    pub(crate) lottery: (u32, u32),
    pub(crate) gc_min_interval: Duration,
    pub(crate) save_on_server_error: bool,
    pub(crate) track_previous_url: bool,
    pub(crate) record_client: bool,
    pub(crate) trusted_proxies: Option<TrustedProxies>,
    pub(crate) max_save_attempts: u32,
    pub(crate) error_handler: Option<ErrorHandler>,
    pub(crate) use_cookie: bool,
    pub(crate) id_header: Option<HeaderName>,
    pub(crate) precedence: SessionSource,
    pub(crate) cache_headers: bool,
    pub(crate) binding: Binding,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            // Laravel's cookie is `laravel_session`; ours says whose it is.
            cookie_name: "keepsake_session".to_owned(),
            cookie_path: "/".to_owned(),
            cookie_domain: None,
            // Secure by default: the id is a bearer credential, so it never
            // travels over plain HTTP and is out of reach of page scripts.
            secure: true,
            http_only: true,
            // CHIPS is for embedded third-party contexts only.
            partitioned: false,
            // Lax blocks the cookie on cross-site POSTs (CSRF) yet keeps users
            // signed in when they follow a link to the site.
            same_site: SameSite::Lax,
            // Laravel's default `SESSION_LIFETIME` of 120 minutes.
            idle_lifetime: Duration::from_secs(120 * 60),
            absolute_lifetime: None,
            expire_on_close: false,
            // An unmodified request writes a touch at most once a minute per
            // session: sliding expiry without a write per request.
            touch_after: Duration::from_secs(60),
            // Laravel's lottery: 2 chances in 100.
            lottery: (2, 100),
            // At most one lottery collection a minute per layer, however
            // many requests win: the odds alone scale with the request rate.
            gc_min_interval: Duration::from_secs(60),
            save_on_server_error: false,
            track_previous_url: false,
            record_client: false,
            // The forwarding headers are the client's to forge unless a
            // proxy in front is known to write them.
            trusted_proxies: None,
            max_save_attempts: 16,
            error_handler: None,
            use_cookie: true,
            id_header: None,
            // A custom header is something only the client's own code can
            // set (never a cross-site page), so it is the stronger signal.
            precedence: SessionSource::Header,
            // A shared cache must never serve one user's page to another.
            cache_headers: true,
            // Off: a changing mobile address would sign users out.
            binding: Binding::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("cookie_name", &self.cookie_name)
            .field("cookie_path", &self.cookie_path)
            .field("cookie_domain", &self.cookie_domain)
            .field("secure", &self.secure)
            .field("http_only", &self.http_only)
            .field("partitioned", &self.partitioned)
            .field("same_site", &self.same_site)
            .field("idle_lifetime", &self.idle_lifetime)
            .field("absolute_lifetime", &self.absolute_lifetime)
            .field("expire_on_close", &self.expire_on_close)
            .field("touch_after", &self.touch_after)
            .field("lottery", &self.lottery)
            .field("gc_min_interval", &self.gc_min_interval)
            .field("save_on_server_error", &self.save_on_server_error)
            .field("track_previous_url", &self.track_previous_url)
            .field("record_client", &self.record_client)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("max_save_attempts", &self.max_save_attempts)
            .field("error_handler", &self.error_handler.as_ref().map(|_| "…"))
            .field("use_cookie", &self.use_cookie)
            .field("id_header", &self.id_header)
            .field("precedence", &self.precedence)
            .field("cache_headers", &self.cache_headers)
            .field("binding", &self.binding)
            .finish()
    }
}

/// The session middleware: put it on a router with `.layer(..)`, take
/// [`Session`](crate::Session) in handlers.
///
/// `SessionLayer` is also the builder: every `with_*` method says what it
/// defaults to.
///
/// ```
/// use std::time::Duration;
/// use keepsake::{MemoryStore, SameSite, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::new())
///     .with_cookie_name("app_session")
///     .with_same_site(SameSite::Strict)
///     .with_lifetime(Duration::from_secs(30 * 60))
///     .with_absolute_lifetime(Duration::from_secs(12 * 3600));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) config: Arc<Config>,
    /// Serialize the commits of one session within this process: concurrent
    /// requests of a session then conflict at most once each, and
    /// compare-and-swap conflicts are left to other processes.
    pub(crate) commits: Arc<CommitLocks>,
    /// The lottery's state: a gc in flight, the start of the last one.
    pub(crate) gc: Arc<crate::gc::Lottery>,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("store", &self.store.kind())
            .field("config", &self.config)
            .finish()
    }
}

impl SessionLayer {
    /// A layer over `store` with the default configuration. The layer
    /// instruments the store itself (see [`from_arc`](Self::from_arc)): do not
    /// wrap it in `Instrumented` yourself, or every operation counts twice.
    pub fn new(store: impl SessionStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A layer over a shared store (the same store can serve several layers,
    /// or a background GC task).
    ///
    /// The layer wraps the store in
    /// [`Instrumented`](keepsake_core::instrument::Instrumented): every store
    /// operation runs in a `tracing` span and, with the `metrics` feature, is
    /// counted and timed.
    #[must_use]
    pub fn from_arc(store: Arc<dyn SessionStore>) -> Self {
        Self {
            store: Arc::new(keepsake_core::instrument::Instrumented::new(store)),
            config: Arc::new(Config::default()),
            commits: Arc::default(),
            gc: Arc::default(),
        }
    }

    /// The store this layer writes to (instrumented: its operations are
    /// traced and measured like the layer's own).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Applies a cookie setting, then checks that the browser would still
    /// store the cookie: a configuration it would silently drop panics here,
    /// at start-up, naming the setting and the value.
    fn cookie_setting(
        self,
        setting: &str,
        value: &dyn fmt::Debug,
        f: impl FnOnce(&mut Config),
    ) -> Self {
        let layer = self.config(f);
        let c = &layer.config;
        if let Err(problem) = session_cookie::check_attributes(
            &c.cookie_name,
            c.secure,
            c.cookie_domain.as_deref(),
            &c.cookie_path,
            c.partitioned,
        ) {
            panic!(
                "SessionLayer::{setting}({value:?}): {} (cookie name {:?}, secure {}, \
                 domain {:?}, path {:?}, partitioned {})",
                problem.message(),
                c.cookie_name,
                c.secure,
                c.cookie_domain,
                c.cookie_path,
                c.partitioned
            );
        }
        layer
    }

    /// The cookie name. Defaults to `keepsake_session`.
    ///
    /// A name starting with `__Host-` (recommended over HTTPS) makes
    /// browsers accept the cookie only when it is `Secure`, has no `Domain`
    /// and has `Path=/`: no subdomain or plain-HTTP page can then plant or
    /// overwrite it. `__Secure-` requires `Secure`.
    ///
    /// # Panics
    ///
    /// When `name` is not a cookie name (an RFC 6265 token: visible ASCII,
    /// no spaces or separators such as `;`, `=`, `,`), or when its prefix
    /// cannot be honoured with the other settings (`__Host-` with
    /// `with_secure(false)`, a domain or a path other than `/`). The message
    /// names the setting and the value.
    #[must_use]
    pub fn with_cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        if let Err(expected) = session_cookie::check_name(&name) {
            panic!(
                "SessionLayer::with_cookie_name({name:?}): invalid cookie name: expected {expected}"
            );
        }
        self.cookie_setting("with_cookie_name", &name.clone(), |c| c.cookie_name = name)
    }

    /// The cookie `Path`. Defaults to `/`.
    ///
    /// # Panics
    ///
    /// When `path` does not start with `/` or holds `;`, a space or a
    /// control character, or when the cookie name starts with `__Host-` and
    /// `path` is not `/`.
    #[must_use]
    pub fn with_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        if let Err(expected) = session_cookie::check_path(&path) {
            panic!("SessionLayer::with_path({path:?}): invalid cookie path: expected {expected}");
        }
        self.cookie_setting("with_path", &path.clone(), |c| c.cookie_path = path)
    }

    /// The cookie `Domain`. Defaults to none (the host that set it only).
    ///
    /// # Panics
    ///
    /// When `domain` is not a domain name, or when the cookie name starts
    /// with `__Host-` (which forbids a domain).
    #[must_use]
    pub fn with_domain(self, domain: impl Into<String>) -> Self {
        let domain = domain.into();
        if let Err(expected) = session_cookie::check_domain(&domain) {
            panic!(
                "SessionLayer::with_domain({domain:?}): invalid cookie domain: expected {expected}"
            );
        }
        self.cookie_setting("with_domain", &domain.clone(), |c| {
            c.cookie_domain = Some(domain);
        })
    }

    /// The cookie's `Secure` attribute. Defaults to `true`; turn it off only
    /// for plain-HTTP development.
    ///
    /// # Panics
    ///
    /// When turned off while the cookie name starts with `__Host-` or
    /// `__Secure-`, or the cookie is [partitioned](Self::with_partitioned):
    /// browsers require `Secure` of those.
    #[must_use]
    pub fn with_secure(self, secure: bool) -> Self {
        self.cookie_setting("with_secure", &secure, |c| c.secure = secure)
    }

    /// The cookie's `HttpOnly` attribute. Defaults to `true`.
    #[must_use]
    pub fn with_http_only(self, http_only: bool) -> Self {
        self.config(|c| c.http_only = http_only)
    }

    /// The cookie's `Partitioned` attribute (CHIPS): for an application
    /// embedded in other sites' pages, a cookie kept per top-level site
    /// rather than blocked as a third-party cookie. Defaults to `false`.
    ///
    /// # Panics
    ///
    /// When turned on while `Secure` is off: browsers drop a partitioned
    /// cookie that is not `Secure`.
    #[must_use]
    pub fn with_partitioned(self, partitioned: bool) -> Self {
        self.cookie_setting("with_partitioned", &partitioned, |c| {
            c.partitioned = partitioned;
        })
    }

    /// The cookie's `SameSite` attribute. Defaults to [`SameSite::Lax`].
    #[must_use]
    pub fn with_same_site(self, same_site: SameSite) -> Self {
        self.config(|c| c.same_site = same_site)
    }

    /// The idle lifetime: a session expires this long after its last write or
    /// touch. Defaults to 120 minutes. A session's own
    /// [`set_lifetime`](crate::Session::set_lifetime) overrides it.
    #[must_use]
    pub fn with_lifetime(self, lifetime: Duration) -> Self {
        self.config(|c| c.idle_lifetime = lifetime)
    }

    /// The absolute lifetime: a session expires this long after it was
    /// created, however active. Defaults to none.
    #[must_use]
    pub fn with_absolute_lifetime(self, lifetime: Duration) -> Self {
        self.config(|c| c.absolute_lifetime = Some(lifetime))
    }

    /// Send the cookie without `Max-Age`/`Expires`, so the browser drops it
    /// when it closes (the server still expires it after the idle lifetime).
    /// Defaults to `false`.
    #[must_use]
    pub fn with_expire_on_close(self, yes: bool) -> Self {
        self.config(|c| c.expire_on_close = yes)
    }

    /// The step by which a session's stored expiry moves. A request that
    /// changed nothing writes a touch (moving the expiry without rewriting
    /// the payload) only when the expiry would move by at least this much,
    /// and a save whose expiry would move by less keeps the stored expiry,
    /// so it changes no indexed column. A session therefore expires between
    /// its lifetime minus this step and its lifetime after its last request.
    /// Defaults to 60 seconds; zero moves the expiry on every request.
    #[must_use]
    pub fn with_touch_after(self, touch_after: Duration) -> Self {
        self.config(|c| c.touch_after = touch_after)
    }

    /// The garbage-collection lottery: after a request that used its session,
    /// the store's `gc` runs on a spawned task with probability
    /// `hits / out_of`. Defaults to 2 in 100, as Laravel; `(0, 1)` turns it
    /// off (for example when a background task collects instead).
    #[must_use]
    pub fn with_lottery(self, hits: u32, out_of: u32) -> Self {
        self.config(|c| c.lottery = (hits.min(out_of), out_of.max(1)))
    }

    /// The shortest time between the starts of two lottery collections of
    /// this layer: a win sooner than that after the previous collection
    /// started is dropped, so collections per second stay bounded whatever
    /// the request rate. Defaults to 60 seconds; [`Duration::ZERO`] turns
    /// the floor off (every win collects, unless a collection is still
    /// running).
    #[must_use]
    pub fn with_gc_min_interval(self, interval: Duration) -> Self {
        self.config(|c| c.gc_min_interval = interval)
    }

    /// Save the session even when the handler answered with a 5xx. Defaults
    /// to `false`: a failed request leaves the session as it was.
    #[must_use]
    pub fn with_save_on_server_error(self, yes: bool) -> Self {
        self.config(|c| c.save_on_server_error = yes)
    }

    /// Record the URL of successful `GET` requests that are not
    /// `X-Requested-With: XMLHttpRequest` as the session's
    /// [`previous_url`](crate::Session::previous_url), for sessions the
    /// request loaded. Defaults to `false`.
    #[must_use]
    pub fn with_previous_url_tracking(self, yes: bool) -> Self {
        self.config(|c| c.track_previous_url = yes)
    }

    /// Store the client's address and `User-Agent` with the record (shown by
    /// a "your devices" page). Defaults to `false`. The address comes from
    /// axum's `ConnectInfo`, or from the forwarding header of
    /// [trusted proxies](Self::with_trusted_proxies).
    #[must_use]
    pub fn with_client_info(self, yes: bool) -> Self {
        self.config(|c| c.record_client = yes)
    }

    /// Trust the reverse proxies in front of the application: the client's
    /// address is read from the header they write, `hops` entries from the
    /// right (see [`TrustedProxies`]), for [client info](Self::with_client_info)
    /// and [binding](Self::with_binding); [`CsrfLayer`](crate::CsrfLayer)'s
    /// origin check takes the host and scheme the client asked for from the
    /// same proxy. Defaults to none: every forwarding header is ignored and
    /// the address is the connection's (axum's `ConnectInfo`).
    ///
    /// Only configure this behind proxies that write the header on every
    /// request; otherwise a client chooses its own address.
    ///
    /// ```
    /// use keepsake::middleware::{ProxyHeader, TrustedProxies};
    /// use keepsake::{MemoryStore, SessionLayer};
    ///
    /// // A CDN in front of nginx, both appending to `X-Forwarded-For`.
    /// let layer = SessionLayer::new(MemoryStore::new())
    ///     .with_trusted_proxies(TrustedProxies::new().with_hops(2));
    /// // One proxy writing RFC 7239 `Forwarded`.
    /// let layer = SessionLayer::new(MemoryStore::new())
    ///     .with_trusted_proxies(TrustedProxies::new().with_header(ProxyHeader::Forwarded));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_trusted_proxies(self, proxies: TrustedProxies) -> Self {
        self.config(|c| c.trusted_proxies = Some(proxies))
    }

    /// How many times a save is tried when concurrent requests of the same
    /// session keep saving first (each retry reloads and replays this
    /// request's changes). Within one process the commits of a session are
    /// serialized, so retries come from other processes sharing the store;
    /// they are spread with a random pause. Defaults to 16.
    #[must_use]
    pub fn with_max_save_attempts(self, attempts: u32) -> Self {
        self.config(|c| c.max_save_attempts = attempts.max(1))
    }

    /// The response for a session failure. Defaults to a plain
    /// `500 Internal Server Error`. The failure is logged and attached to the
    /// response extensions either way.
    #[must_use]
    pub fn with_error_handler<F>(self, handler: F) -> Self
    where
        F: Fn(&SessionFailure) -> Response + Send + Sync + 'static,
    {
        let handler: ErrorHandler = Arc::new(handler);
        self.config(|c| c.error_handler = Some(handler))
    }
}

impl SessionLayer {
    /// Also carry the session id in a request/response header (for example
    /// `x-session-token`), for single-page apps, mobile apps and CLIs: an id
    /// arriving in the header is used like the cookie (validated before any
    /// store is touched, unknown ids replaced), and a new or changed id goes
    /// back in the same header. A request that sent its id in the cookie gets
    /// its answer in the cookie; a request that sent none gets both. When a
    /// session is destroyed the header is sent empty. Defaults to no header.
    ///
    /// Sessions carried by the header skip the CSRF check
    /// ([`CsrfLayer`](crate::CsrfLayer)): a browser cannot attach a custom
    /// header to a cross-site request.
    #[must_use]
    pub fn with_id_header(self, name: HeaderName) -> Self {
        self.config(|c| c.id_header = Some(name))
    }

    /// Carry the session id in `name` only: the cookie is neither read nor
    /// ever set.
    #[must_use]
    pub fn with_header_only(self, name: HeaderName) -> Self {
        self.config(|c| {
            c.id_header = Some(name);
            c.use_cookie = false;
        })
    }

    /// Which id wins when a request sends a cookie and a header that
    /// disagree. Defaults to [`SessionSource::Header`].
    #[must_use]
    pub fn with_id_precedence(self, source: SessionSource) -> Self {
        self.config(|c| c.precedence = source)
    }

    /// Binds sessions to the client's user agent and/or address prefix; see
    /// [`Binding`] for the trade-off. Defaults to no binding.
    ///
    /// ```
    /// use keepsake::middleware::Binding;
    /// use keepsake::{MemoryStore, SessionLayer};
    ///
    /// let layer = SessionLayer::new(MemoryStore::new())
    ///     .with_binding(Binding::user_agent().with_ip_prefix(24, 64));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_binding(self, binding: Binding) -> Self {
        self.config(|c| c.binding = binding)
    }

    /// Whether responses of requests that loaded the session get
    /// `Vary: Cookie` (or the id header) and, unless the handler set one,
    /// `Cache-Control: private`, so a CDN or proxy never serves one user's
    /// page to another. Responses that never touched the session are left
    /// alone and stay cacheable. Defaults to `true`.
    #[must_use]
    pub fn with_cache_headers(self, yes: bool) -> Self {
        self.config(|c| c.cache_headers = yes)
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::new(inner, Arc::new(self.clone()))
    }
}
