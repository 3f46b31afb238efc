//! The demo application (`examples/demo`) in a real browser: headless
//! Chromium driven over WebDriver by `fantoccini`, everything on 127.0.0.1.
//!
//! Needs `chromedriver` and `chromium` (Debian: `apt-get install chromium
//! chromium-driver`; `.ci/browser.sh` installs them). Without them the test
//! prints why and passes, except under `CI=true`, where it fails. Paths can
//! be overridden with `CHROMEDRIVER` and `CHROMIUM`. On failure, screenshots
//! of both browsers are saved and their paths printed.
#![allow(clippy::unwrap_used)]

#[path = "../examples/demo/app.rs"]
mod app;

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use keepsake::{MemoryStore, SessionLayer, SessionStore};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

type Result<T = (), E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(15);
/// The whole scenario, browsers' start-up included.
const TOTAL: Duration = Duration::from_secs(240);

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn find_binary(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        Err(_) => candidates.iter().map(PathBuf::from).find(|p| p.is_file()),
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_headless_chromium() {
    let driver = find_binary("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let chromium = find_binary(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        assert!(
            !under_ci(),
            "chromedriver or chromium is missing, and under CI the browser test must run \
             (run .ci/browser.sh, or set CHROMEDRIVER and CHROMIUM)"
        );
        println!(
            "skipped: chromedriver or chromium not installed \
             (apt-get install chromium chromium-driver, or run .ci/browser.sh)"
        );
        return;
    };

    let run = tokio::time::timeout(TOTAL, run(&driver, &chromium)).await;
    match run {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("browser test failed: {error}"),
        Err(_) => panic!("browser test took longer than {TOTAL:?}"),
    }
}

/// The demo on a random loopback port, as `main.rs` configures it.
async fn serve_demo() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let layer = SessionLayer::from_arc(Arc::clone(&store))
        .with_secure(false)
        .with_client_info(true)
        .with_lottery(0, 1);
    let router = app::app(store, layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service).await {
            eprintln!("demo server stopped: {error}");
        }
    });
    Ok((base, server))
}

/// A chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_driver(driver: &Path) -> Result<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(artifacts().join("chromedriver.log"))?;
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(
                format!("chromedriver did not listen on port {port} within {WAIT:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(driver)
}

/// A browser with its own profile (so its own cookie jar).
async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1000,860",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await?;
    client
        .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
            Some(WAIT),
            Some(WAIT),
            Some(Duration::ZERO),
        ))
        .await?;
    Ok(client)
}

async fn run(driver_path: &Path, chromium: &Path) -> Result {
    let (base, server) = serve_demo().await?;
    let driver = start_driver(driver_path).await?;
    let profiles = artifacts().join(format!("profiles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profiles);

    let first = browser(&driver, chromium, &profiles.join("first")).await?;
    let second = match browser(&driver, chromium, &profiles.join("second")).await {
        Ok(second) => second,
        Err(error) => {
            let _ = first.close().await;
            return Err(error);
        }
    };

    let outcome = scenario(&base, &first, &second).await;
    if let Err(error) = &outcome {
        for (name, client) in [("first", &first), ("second", &second)] {
            let path = artifacts().join(format!("failure-{name}.png"));
            match client.screenshot().await {
                Ok(png) if std::fs::write(&path, &png).is_ok() => {
                    eprintln!("screenshot of the {name} browser: {}", path.display());
                }
                _ => eprintln!("no screenshot of the {name} browser"),
            }
            if let Ok(url) = client.current_url().await {
                eprintln!("the {name} browser was at {url}");
            }
        }
        eprintln!("failed: {error}");
    }
    let _ = first.close().await;
    let _ = second.close().await;
    drop(driver);
    server.abort();
    let _ = std::fs::remove_dir_all(&profiles);
    outcome
}

fn ensure(condition: bool, message: impl Into<String>) -> Result {
    if condition {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

async fn text(c: &Client, css: &str) -> Result<String> {
    let element = c.wait().at_most(WAIT).for_element(Locator::Css(css)).await;
    let element = element.map_err(|e| format!("no `{css}` on the page: {e}"))?;
    Ok(element.text().await?)
}

async fn value(c: &Client, css: &str) -> Result<String> {
    Ok(c.find(Locator::Css(css))
        .await?
        .prop("value")
        .await?
        .unwrap_or_default())
}

async fn present(c: &Client, css: &str) -> Result<bool> {
    Ok(!c.find_all(Locator::Css(css)).await?.is_empty())
}

async fn fill(c: &Client, css: &str, text: &str) -> Result {
    let field = c.find(Locator::Css(css)).await?;
    field.clear().await?;
    field.send_keys(text).await?;
    Ok(())
}

async fn path(c: &Client) -> Result<String> {
    Ok(c.current_url().await?.path().to_owned())
}

/// Clicks `css` and waits until the next page has loaded (the old page's
/// marker is gone), whatever its URL.
async fn click_and_wait(c: &Client, css: &str) -> Result {
    c.execute("window.__keepsakeOldPage = true; return null;", vec![])
        .await?;
    c.find(Locator::Css(css)).await?.click().await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let fresh = c
            .execute(
                "return window.__keepsakeOldPage === undefined && document.readyState === 'complete';",
                vec![],
            )
            .await;
        if matches!(fresh, Ok(Value::Bool(true))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no new page within {WAIT:?} after clicking `{css}`").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(c: &Client, base: &str, username: &str, password: &str) -> Result {
    c.goto(&format!("{base}/login")).await?;
    fill(c, "#username", username).await?;
    fill(c, "#password", password).await?;
    click_and_wait(c, "#sign-in").await
}

async fn scenario(base: &str, a: &Client, b: &Client) -> Result {
    // A wrong password: the error, the username kept, the password not.
    sign_in(a, base, "alice", "wrong").await?;
    ensure(
        path(a).await? == "/login",
        "a failed sign-in stays on /login",
    )?;
    let error = text(a, "#login-error").await?;
    ensure(
        error.contains("do not match"),
        format!("login error: {error:?}"),
    )?;
    ensure(
        value(a, "#username").await? == "alice",
        "the username is kept",
    )?;
    ensure(
        value(a, "#password").await?.is_empty(),
        "the password is not",
    )?;

    // Signing in: the flash shows once, and not after a reload.
    fill(a, "#password", "password").await?;
    click_and_wait(a, "#sign-in").await?;
    ensure(path(a).await? == "/", "signed in, at home")?;
    let flash = text(a, "#flash").await?;
    ensure(flash == "Signed in as alice.", format!("flash: {flash:?}"))?;
    ensure(text(a, "#greeting").await? == "Hello, alice", "greeting")?;
    let visits = text(a, "#visits").await?;
    std::fs::write(artifacts().join("signed-in.png"), a.screenshot().await?)?;
    println!(
        "screenshot of the signed-in page: {}",
        artifacts().join("signed-in.png").display()
    );
    a.refresh().await?;
    ensure(
        !present(a, "#flash").await?,
        "the flash is gone after a reload",
    )?;
    let again = text(a, "#visits").await?;
    ensure(
        visits != again,
        format!("the counter moved: {visits:?} then {again:?}"),
    )?;

    // The session cookie is there, HttpOnly, and out of reach of scripts.
    let cookie = a.get_named_cookie("keepsake_session").await?;
    ensure(
        cookie.http_only() == Some(true),
        "the session cookie is HttpOnly",
    )?;
    let script_cookies = a.execute("return document.cookie;", vec![]).await?;
    ensure(
        !script_cookies
            .as_str()
            .unwrap_or_default()
            .contains("keepsake_session"),
        format!("document.cookie exposes the session: {script_cookies}"),
    )?;

    // A validation error: the message, and the input kept.
    fill(a, "#body", "Remember the milk").await?;
    click_and_wait(a, "#save-note").await?;
    let error = text(a, "#title-error").await?;
    ensure(error.contains("title"), format!("title error: {error:?}"))?;
    ensure(
        value(a, "#body").await? == "Remember the milk",
        "the text is kept after a validation error",
    )?;
    fill(a, "#title", "Groceries").await?;
    click_and_wait(a, "#save-note").await?;
    ensure(text(a, "#flash").await? == "Note saved.", "note saved")?;
    ensure(
        text(a, "#notes").await?.contains("Groceries"),
        "note listed",
    )?;
    ensure(!present(a, "#title-error").await?, "the error is gone")?;

    // A form without its token is refused with 419.
    a.execute(
        "document.querySelector('#note-form input[name=_token]').remove(); return null;",
        vec![],
    )
    .await?;
    fill(a, "#title", "Forged").await?;
    click_and_wait(a, "#save-note").await?;
    let expired = text(a, "#expired").await?;
    ensure(
        expired.contains("419"),
        format!("expired page: {expired:?}"),
    )?;
    let status = a
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/notes', {
               method: 'POST',
               headers: {'content-type': 'application/x-www-form-urlencoded'},
               body: 'title=Forged',
             }).then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await?;
    ensure(
        status == json!(419),
        format!("status without a token: {status}"),
    )?;
    a.goto(&format!("{base}/")).await?;
    ensure(
        !text(a, "#notes").await?.contains("Forged"),
        "nothing forged saved",
    )?;

    // A second browser signs in as the same user; the first one signs it out.
    sign_in(b, base, "alice", "password").await?;
    ensure(path(b).await? == "/", "second browser signed in")?;
    a.goto(&format!("{base}/devices")).await?;
    let rows = a.find_all(Locator::Css("#devices tbody tr")).await?.len();
    ensure(rows == 2, format!("two devices listed, got {rows}"))?;
    let current = a.find_all(Locator::Css("#devices .badge")).await?.len();
    ensure(current == 1, "exactly one marked as this browser")?;
    std::fs::write(artifacts().join("devices.png"), a.screenshot().await?)?;
    click_and_wait(a, "#sign-out-others").await?;
    let flash = text(a, "#flash").await?;
    ensure(
        flash == "Signed out 1 other device.",
        format!("flash: {flash:?}"),
    )?;
    let rows = a.find_all(Locator::Css("#devices tbody tr")).await?.len();
    ensure(rows == 1, format!("one device left, got {rows}"))?;
    b.goto(&format!("{base}/devices")).await?;
    ensure(
        path(b).await? == "/login",
        "the other browser lost its session",
    )?;
    b.goto(&format!("{base}/")).await?;
    ensure(
        text(b, "#greeting").await? == "Hello, stranger",
        "signed out",
    )?;

    // Signing out: the session is gone, and so is access.
    a.goto(&format!("{base}/")).await?;
    click_and_wait(a, "#sign-out").await?;
    ensure(path(a).await? == "/login", "signed out, at /login")?;
    let flash = text(a, "#flash").await?;
    ensure(
        flash == "You have been signed out.",
        format!("flash: {flash:?}"),
    )?;
    a.goto(&format!("{base}/devices")).await?;
    ensure(
        path(a).await? == "/login",
        "no devices page after signing out",
    )?;
    Ok(())
}
