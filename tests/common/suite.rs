//! The end-to-end suite every store runs through the layer: flash timelines,
//! regenerate, invalidate, concurrent writers, concurrent increments, a
//! destroyed session never resurrected, two app instances on one backend, and
//! a corrupt stored payload.

use std::future::Future;
use std::sync::Arc;

use keepsake::testing::TestClient;
use keepsake::{Cas, Record, SessionId, SessionLayer, SessionStore};
use serde_json::json;

use super::{app, ok, run};

/// A layer over `store` as the suite configures it.
pub fn layer(store: Arc<dyn SessionStore>) -> SessionLayer {
    SessionLayer::from_arc(store).with_lottery(0, 1)
}

/// Runs the whole suite. `make` returns a new store handle on the same
/// backend each time it is called (a second "app instance").
pub async fn run_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    let store = make().await;
    let client = TestClient::new(app(), layer(Arc::clone(&store)));
    flash_timelines(&client).await;
    regenerate_keeps_data(&client.new_browser(), &store).await;
    invalidate_destroys(&client.new_browser(), &store).await;
    concurrent_writers(&client.new_browser(), 50).await;
    concurrent_increments(&client.new_browser(), 100).await;
    destroyed_is_not_resurrected(&client.new_browser(), &store).await;
    corrupt_payload_gives_empty_session(&client.new_browser(), &store).await;
    two_instances(make().await, make().await).await;
}

/// Every flash timeline of the crate docs, one request per step.
pub async fn flash_timelines(client: &TestClient) {
    // flash: the next request sees it, the one after does not.
    let c = client.new_browser();
    run(&c, json!([["flash", "status", "ok"]])).await;
    assert_eq!(
        ok(&run(&c, json!([["get", "status"]])).await[0]),
        json!("ok")
    );
    assert_eq!(
        ok(&run(&c, json!([["get", "status"]])).await[0]),
        json!(null)
    );

    // now: this request only.
    let c = client.new_browser();
    let r = run(
        &c,
        json!([["now", "n", 1], ["get", "n"], ["put", "keep_alive", 1]]),
    )
    .await;
    assert_eq!(ok(&r[1]), json!(1));
    assert_eq!(ok(&run(&c, json!([["get", "n"]])).await[0]), json!(null));

    // reflash: one more request.
    let c = client.new_browser();
    run(&c, json!([["flash", "a", 1]])).await;
    let r = run(&c, json!([["get", "a"], ["reflash"]])).await;
    assert_eq!(ok(&r[0]), json!(1));
    assert_eq!(ok(&run(&c, json!([["get", "a"]])).await[0]), json!(1));
    assert_eq!(ok(&run(&c, json!([["get", "a"]])).await[0]), json!(null));

    // keep: only the kept key survives.
    let c = client.new_browser();
    run(&c, json!([["flash", "a", 1], ["flash", "b", 2]])).await;
    let r = run(&c, json!([["get", "a"], ["get", "b"], ["keep", ["a"]]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!(1), json!(2)));
    let r = run(&c, json!([["get", "a"], ["get", "b"]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!(1), json!(null)));

    // flash then now: the key is in `old`, gone next request.
    let c = client.new_browser();
    run(
        &c,
        json!([["flash", "x", 1], ["now", "x", 2], ["put", "keep_alive", 1]]),
    )
    .await;
    assert_eq!(ok(&run(&c, json!([["get", "x"]])).await[0]), json!(null));

    // a later put does not un-flash.
    let c = client.new_browser();
    run(&c, json!([["flash", "x", 1]])).await;
    let r = run(&c, json!([["get", "x"], ["put", "x", 99]])).await;
    assert_eq!(ok(&r[0]), json!(1));
    assert_eq!(ok(&run(&c, json!([["get", "x"]])).await[0]), json!(null));

    // a request that never loads the session does not age flash data.
    let c = client.new_browser();
    run(&c, json!([["flash", "status", "ok"]])).await;
    c.get("/none").await.assert_status(200);
    assert_eq!(
        ok(&run(&c, json!([["get", "status"]])).await[0]),
        json!("ok")
    );
}

/// `regenerate`: new id, data kept, token rotated, old record destroyed.
pub async fn regenerate_keeps_data(client: &TestClient, store: &Arc<dyn SessionStore>) {
    let r = run(client, json!([["put", "user", "ada"], ["token"], ["id"]])).await;
    let (token, old_id) = (ok(&r[1]), ok(&r[2]));
    let r = run(client, json!([["regenerate"], ["id"], ["token"]])).await;
    assert_ne!(ok(&r[1]), old_id, "regenerate must change the id");
    assert_ne!(ok(&r[2]), token, "regenerate must rotate the CSRF token");
    client
        .session()
        .await
        .assert_regenerated()
        .assert_has_value("user", "ada");
    let old = SessionId::parse(old_id.as_str().unwrap()).unwrap();
    assert!(store.load(&old.storage_key()).await.unwrap().is_none());
    let r = run(client, json!([["get", "user"], ["id"]])).await;
    assert_eq!(ok(&r[0]), json!("ada"));
    if store.client_side().is_none() {
        assert_eq!(
            ok(&r[1]),
            json!(client.cookie().unwrap()),
            "the cookie carries the new id"
        );
    }
}

/// `invalidate`: data gone, old record destroyed, a new id.
pub async fn invalidate_destroys(client: &TestClient, store: &Arc<dyn SessionStore>) {
    let r = run(client, json!([["put", "user", "ada"], ["id"]])).await;
    let old = SessionId::parse(ok(&r[1]).as_str().unwrap()).unwrap();
    let r = run(client, json!([["invalidate"], ["all"], ["id"]])).await;
    assert_eq!(ok(&r[1]), json!({}));
    assert_ne!(ok(&r[2]), json!(old.as_str()));
    client.session().await.assert_invalidated();
    assert!(store.load(&old.storage_key()).await.unwrap().is_none());
    // An empty invalidated session is not stored, and its cookie is removed.
    assert_eq!(client.cookie(), None);
    // The old cookie, replayed, does not bring anything back.
    client.set_cookie(Some(old.as_str().to_owned()));
    let r = run(client, json!([["get", "user"], ["id"]])).await;
    assert_eq!(ok(&r[0]), json!(null));
    assert_ne!(
        ok(&r[1]),
        json!(old.as_str()),
        "an unknown id is never adopted"
    );
}

/// `n` concurrent requests on one session, each writing its own key.
pub async fn concurrent_writers(client: &TestClient, n: usize) {
    run(client, json!([["put", "init", true]])).await;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let tab = client.fork();
            tokio::spawn(async move { tab.post(&format!("/write/k{i}"), &[]).await.status })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let snapshot = client.session().await;
    for i in 0..n {
        snapshot.assert_has(&format!("k{i}"));
    }
    snapshot.assert_has("init");
}

/// Two tabs incrementing one counter `n` times each end at `2n`.
pub async fn concurrent_increments(client: &TestClient, n: usize) {
    run(client, json!([["put", "counter", 0]])).await;
    let tabs: Vec<_> = (0..2)
        .map(|_| {
            let tab = client.fork();
            tokio::spawn(async move {
                for _ in 0..n {
                    tab.post("/incr", &[]).await.assert_status(200);
                }
            })
        })
        .collect();
    for tab in tabs {
        tab.await.unwrap();
    }
    client.session().await.assert_has_value("counter", 2 * n);
}

/// A request that saves after another one invalidated the session does not
/// bring it back, and is answered as failed (409, no cookie), never with a
/// silent success.
pub async fn destroyed_is_not_resurrected(client: &TestClient, store: &Arc<dyn SessionStore>) {
    let r = run(client, json!([["put", "user", "ada"], ["id"]])).await;
    let old = SessionId::parse(ok(&r[1]).as_str().unwrap()).unwrap();
    let slow_tab = client.fork();
    let slow = tokio::spawn(async move {
        let response = slow_tab.post("/slow/late", &[]).await;
        (response.status.as_u16(), response.set_cookies().len())
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logout = client.new_browser();
    logout.set_cookie(Some(old.as_str().to_owned()));
    run(&logout, json!([["invalidate"]])).await;
    assert_eq!(slow.await.unwrap(), (409, 0), "the late write is refused");
    assert!(
        store.load(&old.storage_key()).await.unwrap().is_none(),
        "a late save must not resurrect a destroyed session"
    );
}

/// A stored payload that does not decode gives an empty session, not an error.
pub async fn corrupt_payload_gives_empty_session(
    client: &TestClient,
    store: &Arc<dyn SessionStore>,
) {
    let id = SessionId::generate();
    let now = keepsake::now();
    let record = Record {
        key: id.storage_key(),
        payload: "{not json at all".into(),
        last_activity: now,
        expires_at: now + 600,
        version: 1,
        user_id: None,
        ip_address: None,
        user_agent: None,
    };
    assert_eq!(store.create(&record).await.unwrap(), Cas::Applied);
    client.set_cookie(Some(id.as_str().to_owned()));
    let r = run(client, json!([["all"], ["put", "fresh", 1]])).await;
    assert_eq!(ok(&r[0]), json!({}));
    client.session().await.assert_has_value("fresh", 1);
}

/// Two app instances on one backend: a login on one is seen on the other,
/// and concurrent writes through both lose nothing.
pub async fn two_instances(a: Arc<dyn SessionStore>, b: Arc<dyn SessionStore>) {
    let first = TestClient::new(app(), layer(a));
    let second = TestClient::new(app(), layer(b));
    run(
        &first,
        json!([
            ["put", "user", "ada"],
            ["set_user_id", "ada"],
            ["regenerate"]
        ]),
    )
    .await;
    second.set_cookie(first.cookie());
    let r = run(&second, json!([["get", "user"], ["user_id"]])).await;
    assert_eq!((ok(&r[0]), ok(&r[1])), (json!("ada"), json!("ada")));

    run(&second, json!([["put", "counter", 0]])).await;
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let client = if i % 2 == 0 {
                first.fork()
            } else {
                second.fork()
            };
            tokio::spawn(async move {
                client
                    .post(&format!("/write/w{i}"), &[])
                    .await
                    .assert_status(200);
                client.post("/incr", &[]).await.assert_status(200);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let snapshot = first.session().await;
    snapshot.assert_has_value("counter", 40);
    for i in 0..40 {
        snapshot.assert_has(&format!("w{i}"));
    }
}
