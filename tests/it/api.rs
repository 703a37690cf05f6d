//! The REST contract on a real redis-server: authentication, every error code, game
//! lifecycle, implicit games, cancellation, queue expiry, and 503 while Redis is down.
//! No agent runs here, so every accepted execution stays queued unless the test ends it.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

async fn replica_with(config: impl FnOnce(&mut Config)) -> (RedisServer, Replica) {
    let redis = RedisServer::start().unwrap();
    let mut c = test_config("api");
    config(&mut c);
    let replica = Replica::start(c, &redis.url()).await;
    (redis, replica)
}

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn v1_needs_a_valid_bearer_token_and_health_is_open() {
    let (_redis, replica) = replica_with(|c| c.api_tokens = Some("one, two".into())).await;
    let mut api = replica.api();
    api.token = None;
    assert_error(&api.get("/v1/pool").await, 401, "unauthorized");
    api.token = Some("wrong".into());
    assert_error(&api.get("/v1/pool").await, 401, "unauthorized");
    api.token = Some("tw".into());
    assert_error(&api.get("/v1/pool").await, 401, "unauthorized");
    for token in ["one", "two"] {
        api.token = Some(token.into());
        assert_eq!(api.get("/v1/pool").await.status, 200);
    }
    api.token = None;
    assert_eq!(api.get("/healthz").await.status, 200);
    assert_eq!(api.get("/readyz").await.status, 200);
    replica.stop().await;
}

#[tokio::test]
async fn games_are_created_refreshed_read_and_deleted() {
    let (_redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    let created = api
        .send(
            "PUT",
            "/v1/games/match-1",
            Some(br#"{"ttl_s": 30}"#.to_vec()),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["game_id"], "match-1");
    assert_eq!(created.body["state"], "pending", "no VM is Ready");
    assert_eq!(created.body["vm_id"], serde_json::Value::Null);
    assert!(created.body["created_at"].as_str().unwrap().ends_with('Z'));
    let again = api.put_game("match-1").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["created_at"], created.body["created_at"]);
    assert_eq!(
        api.get("/v1/games/match-1").await.body["game_id"],
        "match-1"
    );
    // An execution extends the lease by the game's own ttl_s (30 s), not the default hour.
    api.submit("match-1", python("print(1)"), 0).await;
    let refreshed = api.get("/v1/games/match-1").await.body;
    let secs = |v: &serde_json::Value| {
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        time::OffsetDateTime::parse(v.as_str().unwrap(), rfc3339)
            .unwrap()
            .unix_timestamp()
    };
    let lease = secs(&refreshed["expires_at"]) - secs(&refreshed["created_at"]);
    assert!((30..=32).contains(&lease), "lease {lease} s: {refreshed}");
    assert_eq!(
        api.send("DELETE", "/v1/games/match-1", None).await.status,
        204
    );
    assert_error(&api.get("/v1/games/match-1").await, 404, "game_not_found");
    assert_error(
        &api.send("DELETE", "/v1/games/match-1", None).await,
        404,
        "game_not_found",
    );
    replica.stop().await;
}

#[tokio::test]
async fn bad_game_requests_are_rejected_and_change_nothing() {
    let (_redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    assert_error(&api.put_game("bad%20id").await, 400, "invalid_game_id");
    assert_error(
        &api.put_game(&"x".repeat(129)).await,
        400,
        "invalid_game_id",
    );
    assert_error(&api.get("/v1/games/a:b").await, 400, "invalid_game_id");
    let r = api
        .send("PUT", "/v1/games/g", Some(br#"{"ttl_s": 0}"#.to_vec()))
        .await;
    assert_error(&r, 422, "invalid_ttl");
    let r = api
        .send("PUT", "/v1/games/g", Some(br#"{"ttl_s": "long"}"#.to_vec()))
        .await;
    assert_error(&r, 400, "invalid_json");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ttl_s"),
        "{}",
        r.body
    );
    let r = api
        .send("PUT", "/v1/games/g", Some(br#"{"ttl_s": 5"#.to_vec()))
        .await;
    assert_error(&r, 400, "invalid_json");
    assert_error(&api.get("/v1/games/g").await, 404, "game_not_found");
    assert_error(&api.get("/v1/nothing").await, 404, "not_found");
    replica.stop().await;
}

#[tokio::test]
async fn execution_requests_are_validated_field_by_field() {
    let (_redis, replica) = replica_with(|c| c.max_request_bytes = 4096).await;
    let api = replica.api();
    let cases: Vec<(serde_json::Value, u16, &str, &str)> = vec![
        (
            json!({"files": [{"name": "a.py", "content": ""}]}),
            400,
            "invalid_json",
            "language",
        ),
        (json!({"language": "python"}), 400, "invalid_json", "files"),
        (
            json!({"language": "python", "files": [{"name": "a.py"}]}),
            400,
            "invalid_json",
            "files[0]",
        ),
        (
            json!({"language": "python", "files": [], "limits": {"wall_time_ms": "soon"}}),
            400,
            "invalid_json",
            "limits.wall_time_ms",
        ),
        (
            json!({"language": "python", "files": [], "network": true}),
            400,
            "invalid_json",
            "network",
        ),
        (
            json!({"language": "cobol", "files": [{"name": "a", "content": ""}]}),
            422,
            "unsupported_language",
            "cobol",
        ),
        (
            json!({"language": "python", "files": []}),
            422,
            "invalid_files",
            "files",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": ""}], "limits": {"wall_time_ms": 0}}),
            422,
            "invalid_limits",
            "wall_time_ms",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": ""}], "limits": {"memory_mb": 1_000_000}}),
            422,
            "invalid_limits",
            "memory_mb",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": ""}], "limits": {"cpu_time_ms": -1}}),
            400,
            "invalid_json",
            "cpu_time_ms",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": ""}], "args": ["a\u{0}b"]}),
            422,
            "invalid_args",
            "args[0]",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": ""}], "idempotency_key": ""}),
            422,
            "invalid_idempotency_key",
            "idempotency_key",
        ),
    ];
    for (body, status, code, names) in cases {
        let r = api.submit("g", body.clone(), 0).await;
        assert_error(&r, status, code);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(names),
            "{body} -> {}",
            r.body
        );
    }
    for name in [
        "",
        "/etc/passwd",
        "..",
        ".",
        "a/b",
        "a\u{0}b",
        &"n".repeat(256),
    ] {
        let r = api
            .submit(
                "g",
                json!({"language": "python", "files": [{"name": name, "content": ""}]}),
                0,
            )
            .await;
        assert_error(&r, 422, "invalid_file_name");
    }
    let r = api.submit("g", json!({"language": "python", "files": [{"name": "a", "content": ""}, {"name": "a", "content": ""}]}), 0).await;
    assert_error(&r, 422, "invalid_file_name");
    let r = api
        .send(
            "POST",
            "/v1/games/g/executions",
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_error(&r, 400, "invalid_json");
    let r = api
        .send(
            "POST",
            "/v1/games/g/executions?wait_s=61",
            Some(serde_json::to_vec(&python("")).unwrap()),
        )
        .await;
    assert_error(&r, 400, "invalid_wait_s");
    let r = api
        .send(
            "POST",
            "/v1/games/g/executions?wait_s=x",
            Some(serde_json::to_vec(&python("")).unwrap()),
        )
        .await;
    assert_error(&r, 400, "invalid_wait_s");
    let big = python(&"#".repeat(5000));
    let r = api.submit("g", big, 0).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_error(&r, 413, "payload_too_large");
    assert_error(
        &api.submit("bad id", python(""), 0).await,
        400,
        "invalid_game_id",
    );
    // None of it started the game.
    assert_error(&api.get("/v1/games/g").await, 404, "game_not_found");
    let pool = api.get("/v1/pool").await;
    assert_eq!(pool.body["games"], json!({"placed": 0, "pending": 0}));
    replica.stop().await;
}

#[tokio::test]
async fn an_execution_for_an_unknown_game_starts_it_and_is_accepted() {
    let (_redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    let r = api.submit("fresh", python("print(1)"), 0).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["execution_id"].as_str().unwrap().to_string();
    assert_eq!(
        r.headers["location"],
        format!("/v1/executions/{id}").as_str()
    );
    assert_eq!(r.body["state"], "queued");
    assert_eq!(r.body["game_id"], "fresh");
    assert_eq!(api.get("/v1/games/fresh").await.body["state"], "pending");
    let read = api.execution(&id, 0).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["execution_id"], id.as_str());
    // Same idempotency key: same execution.
    let mut body = python("print(1)");
    body["idempotency_key"] = json!("submit-1");
    let a = api.submit("fresh", body.clone(), 0).await;
    let b = api.submit("fresh", body, 0).await;
    assert_eq!(a.body["execution_id"], b.body["execution_id"]);
    assert_error(
        &api.execution("0123456789abcdef0123456789abcdef", 0).await,
        404,
        "execution_not_found",
    );
    assert_error(&api.execution("nope", 0).await, 404, "execution_not_found");
    replica.stop().await;
}

#[tokio::test]
async fn deleting_a_game_cancels_its_queued_executions() {
    let (_redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    let id = api.submit("g", python("print(1)"), 0).await.body["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(api.send("DELETE", "/v1/games/g", None).await.status, 204);
    let record = api.execution(&id, 0).await.body;
    assert_eq!(record["state"], "cancelled");
    assert_eq!(record["error"]["code"], "game_deleted");
    replica.stop().await;
}

#[tokio::test]
async fn an_execution_no_vm_takes_ends_expired() {
    let (_redis, replica) = replica_with(|c| c.queue_timeout = Duration::from_secs(1)).await;
    let api = replica.api();
    let id = api.submit("g", python("print(1)"), 0).await.body["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    // wait_s is woken by the sweeper's publish, not by polling.
    let r = api.execution(&id, 10).await;
    assert_eq!(r.body["state"], "expired", "{}", r.body);
    assert_eq!(r.body["error"]["code"], "queue_timeout");
    replica.stop().await;
}

#[tokio::test]
async fn languages_are_listed_with_their_aliases() {
    let (_redis, replica) =
        replica_with(|c| c.languages = vec!["python".into(), "bash".into()]).await;
    let r = replica.api().get("/v1/languages").await;
    let names: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["python", "bash"]);
    assert!(r.body[0]["aliases"]
        .as_array()
        .unwrap()
        .contains(&json!("py")));
    // A catalog language the operator did not enable is refused.
    let js = json!({"language": "javascript", "files": [{"name": "a.js", "content": ""}]});
    assert_error(
        &replica.api().submit("g", js, 0).await,
        422,
        "unsupported_language",
    );
    replica.stop().await;
}

#[tokio::test]
async fn with_redis_down_the_api_answers_503_and_accepts_nothing() {
    let (mut redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    redis.kill();
    let r = api.submit("g", python("print(1)"), 0).await;
    assert_error(&r, 503, "unavailable");
    assert_error(&api.put_game("g").await, 503, "unavailable");
    let mut open = api.clone();
    open.token = None;
    assert_eq!(open.get("/readyz").await.status, 503);
    redis.restart().unwrap();
    // The replica reconnects by itself; nothing from the outage was written.
    eventually(Duration::from_secs(10), "readyz after the restart", || {
        let open = open.clone();
        async move { (open.get("/readyz").await.status == 200).then_some(()) }
    })
    .await;
    assert_error(&api.get("/v1/games/g").await, 404, "game_not_found");
    assert_eq!(api.submit("g", python("print(1)"), 0).await.status, 202);
    replica.stop().await;
}

#[tokio::test]
async fn framework_rejections_use_the_json_error_shape() {
    let (_redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    let r = api.send("PATCH", "/v1/games/g", None).await;
    assert_error(&r, 405, "method_not_allowed");
    replica.stop().await;
}

#[tokio::test]
async fn the_plan_endpoint_answers_what_the_formula_would_do() {
    let (_redis, replica) = replica_with(|c| {
        c.games_per_vm = 8;
        c.headroom_games = 4.0;
        c.headroom_z = 2.0;
        c.max_vms = 1000;
    })
    .await;
    let api = replica.api();
    // The worked example of the docs: 37 placed, 3 pending, 40 reserved, 0.5/s, 45 s boot.
    let r = api
        .get("/v1/pool/plan?games=37&pending=3&reserved=40&arrivals_per_s=0.5&boot_s=45")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["desired_vms"], 14, "{}", r.body);
    assert_eq!(r.body["inputs"]["games_per_vm"], 8);
    assert!(r.body["formula"].as_str().unwrap().contains("games_per_vm"));
    assert_error(
        &api.get("/v1/pool/plan?games=lots").await,
        400,
        "invalid_query",
    );
    assert_error(
        &api.get("/v1/pool/plan?games=-1").await,
        400,
        "invalid_query",
    );
    let pool = api.get("/v1/pool").await.body;
    assert!(pool["formula"].is_string(), "{pool}");
    let mut open = api.clone();
    open.token = None;
    assert_error(&open.get("/v1/pool/plan").await, 401, "unauthorized");
    assert_eq!(
        api.send("POST", "/v1/pool/reconcile", None).await.status,
        202
    );
    replica.stop().await;
}

#[tokio::test]
async fn reservations_are_validated_listed_and_deleted() {
    let (_redis, replica) = replica_with(|_| {}).await;
    let api = replica.api();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let start_at = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = |games: i64, start: &str, duration: i64| {
        serde_json::to_vec(&json!({"games": games, "start_at": start, "duration_s": duration}))
            .unwrap()
    };
    let r = api
        .send(
            "POST",
            "/v1/pool/reservations",
            Some(body(200, &start_at, 600)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(r.body["games"], 200);
    for (bad, code) in [
        (body(0, &start_at, 600), "invalid_reservation"),
        (body(200, "tomorrow", 600), "invalid_reservation"),
        (body(200, &start_at, 0), "invalid_reservation"),
        (
            body(200, "2001-01-01T00:00:00Z", 600),
            "invalid_reservation",
        ),
    ] {
        assert_error(
            &api.send("POST", "/v1/pool/reservations", Some(bad)).await,
            422,
            code,
        );
    }
    let r = api
        .send(
            "POST",
            "/v1/pool/reservations",
            Some(body(-1, &start_at, 600)),
        )
        .await;
    assert_error(&r, 400, "invalid_json");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("games"));
    let listed = api.get("/v1/pool/reservations").await.body;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["reservation_id"], id.as_str());
    assert_eq!(
        api.send("DELETE", &format!("/v1/pool/reservations/{id}"), None)
            .await
            .status,
        204
    );
    assert_error(
        &api.send("DELETE", &format!("/v1/pool/reservations/{id}"), None)
            .await,
        404,
        "reservation_not_found",
    );
    replica.stop().await;
}
