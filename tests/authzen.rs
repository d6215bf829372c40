//! The AuthZEN 1.0 HTTP API over real HTTP on 127.0.0.1:0: every expectation case of
//! each example policy decided the same as over gRPC; every 400 case; batch defaults and
//! each evaluation semantic; the three searches and subject-search pagination;
//! discovery; X-Request-ID; credentials (401 with WWW-Authenticate, 403); an
//! API-gateway-style scenario of method + route template checks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test that panics has failed; that is its job"
)]

mod common;

use std::{net::SocketAddr, time::Duration};

use authz::{
    authzen::{self, AuthzenConfig},
    cache::Cache,
    grpc::{
        AuthzService, ServiceConfig,
        auth::{AdminTokens, file_line},
    },
    pb,
};
use common::{TestServer, example, expectations};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An AuthZEN server over `cache`; stops when the returned sender is dropped.
async fn start(
    cache: Cache,
    tokens: Option<AdminTokens>,
    default_tenant: Option<&str>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AuthzService::new(cache, ServiceConfig::default()).with_tokens(tokens);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(authzen::serve(
        listener,
        service,
        AuthzenConfig {
            default_tenant: default_tenant.map(str::to_owned),
        },
        async {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// A response: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange on a fresh connection, bounded by a timeout.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        conn.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("HTTP answer within 10s");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head and body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Answer {
    send(addr, "POST", path, &[JSON], &body.to_string()).await
}

fn evaluation(subject: &str, rtype: &str, id: &str, action: &str, scope: &str) -> Value {
    let mut resource = json!({"type": rtype, "id": id});
    if !scope.is_empty() {
        resource["properties"] = json!({"scope": scope});
    }
    json!({
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": resource,
    })
}

#[tokio::test]
async fn every_expectation_decides_the_same_over_authzen_and_grpc() {
    let mut total = 0;
    for name in ["chat-api.yaml", "console.yaml", "gateway.yaml"] {
        let server = TestServer::start(&example(name)).await;
        let (addr, _stop) = start(server.cache.clone(), None, None).await;
        let mut c = server.client.clone();
        for case in expectations(&name.replace(".yaml", ".expect.yaml")).cases {
            let grpc = c.check(case.to_pb()).await;
            let body = match (&case.permission, &case.method, &case.path) {
                (Some(p), _, _) => evaluation(&case.subject, "permission", p, p, &case.scope),
                (None, Some(m), Some(p)) => evaluation(&case.subject, "route", p, m, &case.scope),
                _ => panic!("case {}", case.name),
            };
            let http = post(
                addr,
                &format!("/tenants/{}/access/v1/evaluation", case.tenant),
                &body,
            )
            .await;
            match grpc {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_eq!(http.status, 200, "{}: {}", case.name, http.body);
                    assert_eq!(http.json(), json!({"decision": r.allowed}), "{}", case.name);
                }
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", case.name);
                    assert_eq!(http.status, 400, "{}: {}", case.name, http.body);
                }
            }
            total += 1;
        }
        server.stop().await;
    }
    assert!(total > 150, "only {total} cases");
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let path = "/tenants/acme/access/v1/evaluation";
    let good = evaluation("erin", "route", "/experts/e-1", "PUT", "");
    // Not JSON, empty, malformed, not an object.
    for (headers, body, says) in [
        (
            vec![("Content-Type", "text/plain")],
            good.to_string(),
            "Content-Type",
        ),
        (vec![], good.to_string(), "Content-Type"),
        (vec![JSON], String::new(), "empty"),
        (vec![JSON], "{bad".to_owned(), "malformed JSON"),
        (vec![JSON], "[1]".to_owned(), "JSON object"),
    ] {
        let a = send(addr, "POST", path, &headers, &body).await;
        assert_eq!(a.status, 400, "{body}");
        assert!(a.body.contains(says), "{}", a.body);
    }
    // Missing and mistyped attributes, and values the model refuses.
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for (pointer, value, field) in [
        ("/subject", Value::Null, "`subject` is required"),
        ("/subject/id", Value::Null, "`subject.id` is required"),
        ("/subject/id", json!(5), "`subject.id` must be a string"),
        ("/subject/type", Value::Null, "`subject.type` is required"),
        ("/action", json!("PUT"), "`action` must be an object"),
        ("/action/name", Value::Null, "`action.name` is required"),
        (
            "/resource/type",
            json!(true),
            "`resource.type` must be a string",
        ),
        ("/resource/id", Value::Null, "`resource.id` is required"),
        ("/action/name", json!("put"), "`action.name`"),
        ("/resource/id", json!("no-slash"), "`resource.id`"),
        ("/subject/id", json!("a b"), "`subject.id`"),
    ] {
        let mut v = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut v
        } else {
            v.pointer_mut(parent).unwrap()
        };
        if value.is_null() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            target[key] = value;
        }
        cases.push((v, field));
    }
    let mut v = evaluation("ann", "permission", "x", "chat.use", "");
    v["resource"]["properties"] = json!({"scope": "/bad"});
    cases.push((v, "`resource.properties.scope`"));
    for (body, field) in cases {
        let a = post(addr, path, &body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.body.contains(field), "{body}: {}", a.body);
    }
    // Unknown fields are ignored; a deny is 200.
    let mut v = evaluation("adam", "route", "/experts/", "POST", "");
    v["extra"] = json!({"anything": [1, 2]});
    v["subject"]["properties"] = json!({"department": "x"});
    let a = post(addr, path, &v).await;
    assert_eq!((a.status, a.json()), (200, json!({"decision": false})));
    // The decision context, when asked for: our reason, revision and explanation.
    v["context"] = json!({"authz_explain": true});
    let ctx = post(addr, path, &v).await.json();
    assert_eq!(ctx["context"]["reason"], "no_grant");
    assert_eq!(ctx["context"]["revision"], 1);
    assert!(
        ctx["context"]["explanation"]
            .as_str()
            .unwrap()
            .contains("requires role `alan-editor`")
    );
    // X-Request-ID is echoed, on success and on error.
    for body in [good.to_string(), String::new()] {
        let a = send(
            addr,
            "POST",
            path,
            &[JSON, ("X-Request-ID", "req-42")],
            &body,
        )
        .await;
        assert_eq!(a.header("x-request-id"), Some("req-42"));
    }
    server.stop().await;
}

#[tokio::test]
async fn evaluations_take_defaults_and_each_semantic() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let path = "/tenants/acme/access/v1/evaluations";
    let route = |id: &str| json!({"resource": {"type": "route", "id": id}});
    let items = json!([
        route("/chats/"),                          // GET allowed for erin
        route("/groups/"),                         // GET denied (needs alan-admin)
        {"resource": {"type": "route"}},           // bad: no id
        {"action": {"name": "PUT"}, "resource": {"type": "route", "id": "/experts/e-1"}}, // allowed
    ]);
    let body = |semantic: Option<&str>| {
        let mut v = json!({
            "subject": {"type": "user", "id": "erin"},
            "action": {"name": "GET"},
            "evaluations": items,
        });
        if let Some(s) = semantic {
            v["options"] = json!({"evaluations_semantic": s});
        }
        v
    };
    let decisions = |v: &Value| -> Vec<bool> {
        v["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["decision"].as_bool().unwrap())
            .collect()
    };
    let all = post(addr, path, &body(None)).await.json();
    assert_eq!(decisions(&all), [true, false, false, true]);
    assert!(
        all["evaluations"][2]["context"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`evaluations[2].resource.id` is required")
    );
    assert_eq!(
        post(addr, path, &body(Some("execute_all"))).await.json(),
        all
    );
    let d = post(addr, path, &body(Some("deny_on_first_deny")))
        .await
        .json();
    assert_eq!(decisions(&d), [true, false]);
    let p = post(addr, path, &body(Some("permit_on_first_permit")))
        .await
        .json();
    assert_eq!(decisions(&p), [true]);
    let bad = post(addr, path, &body(Some("sometimes"))).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("evaluations_semantic"), "{}", bad.body);
    // No evaluations: one evaluation, answered as one.
    let one = post(
        addr,
        path,
        &evaluation("erin", "route", "/experts/e-1", "PUT", ""),
    )
    .await;
    assert_eq!(one.json(), json!({"decision": true}));
    // An item's key replaces the default whole: its subject has no type, so it is bad.
    let v = json!({
        "subject": {"type": "user", "id": "erin"},
        "action": {"name": "GET"},
        "evaluations": [{"subject": {"id": "mia"}, "resource": {"type": "route", "id": "/chats/"}}],
    });
    let r = post(addr, path, &v).await.json();
    assert!(
        r["evaluations"][0]["context"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evaluations[0].subject.type")
    );
    server.stop().await;
}

#[tokio::test]
async fn searches_page_and_agree_with_grpc() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let mut c = server.client.clone();
    // Subject search, two at a time, against Check for every subject.
    let mut got = Vec::new();
    let mut token = String::new();
    loop {
        let mut v = json!({
            "subject": {"type": "user", "id": "ignored"},
            "action": {"name": "POST"},
            "resource": {"type": "route", "id": "/experts/"},
            "page": {"limit": 2},
        });
        if !token.is_empty() {
            v["page"]["token"] = json!(token);
        }
        let a = post(addr, "/tenants/acme/access/v1/search/subject", &v).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["type"], "user");
            got.push(r["id"].as_str().unwrap().to_owned());
        }
        token = v["page"]["next_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
    }
    let mut want = Vec::new();
    let ids: Vec<String> = server
        .cache
        .tenant("acme")
        .unwrap()
        .subjects
        .keys()
        .map(str::to_owned)
        .collect();
    for s in ids {
        let r = c
            .check(pb::CheckRequest {
                tenant_id: "acme".into(),
                subject_id: s.clone(),
                action: Some(pb::check_request::Action::Route(pb::HttpRoute {
                    method: "POST".into(),
                    path: "/experts/".into(),
                })),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if r.allowed {
            want.push(s);
        }
    }
    assert!(!want.is_empty());
    assert_eq!(got, want);
    // Action search on a route: exactly the methods Check allows.
    let a = post(
        addr,
        "/tenants/acme/access/v1/search/action",
        &json!({"subject": {"type": "user", "id": "erin"}, "resource": {"type": "route", "id": "/experts/e-1"}}),
    )
    .await
    .json();
    let names: Vec<&str> = a["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = c
            .check(pb::CheckRequest {
                tenant_id: "acme".into(),
                subject_id: "erin".into(),
                action: Some(pb::check_request::Action::Route(pb::HttpRoute {
                    method: m.into(),
                    path: "/experts/e-1".into(),
                })),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(names.contains(&m), r.allowed, "{m}");
    }
    // Action search on a scope: the permissions held there.
    let a = post(
        addr,
        "/tenants/acme/access/v1/search/action",
        &json!({"subject": {"type": "user", "id": "erin"}, "resource": {"type": "scope", "id": ""}}),
    )
    .await
    .json();
    assert!(
        a["results"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "chat.use"}))
    );
    // Resource search: scopes where a permission is held, routes callable with a method.
    let scopes = post(
        addr,
        "/tenants/acme/access/v1/search/resource",
        &json!({"subject": {"type": "user", "id": "erin"}, "action": {"name": "chat.use"}, "resource": {"type": "scope"}}),
    )
    .await
    .json();
    assert!(
        scopes["results"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "scope", "id": ""}))
    );
    let routes = post(
        addr,
        "/tenants/acme/access/v1/search/resource",
        &json!({"subject": {"type": "user", "id": "erin"}, "action": {"name": "PUT"}, "resource": {"type": "route"}}),
    )
    .await
    .json();
    assert!(
        routes["results"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "route", "id": "/experts/{expert_id}"})),
        "{routes}"
    );
    // Unknown ids or types find nothing, not 400.
    let none = post(
        addr,
        "/tenants/nope/access/v1/search/subject",
        &json!({"subject": {"type": "user"}, "action": {"name": "x.y"}, "resource": {"type": "doc", "id": "1"}}),
    )
    .await;
    assert_eq!(
        (none.status, none.json()["results"].clone()),
        (200, json!([]))
    );
    server.stop().await;
}

#[tokio::test]
async fn discovery_per_tenant_and_the_default_tenant() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let a = send(
        addr,
        "GET",
        "/.well-known/authzen-configuration/tenants/acme",
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let pdp = format!("http://{addr}/tenants/acme");
    assert_eq!(v["policy_decision_point"], pdp);
    assert_eq!(
        v["access_evaluation_endpoint"],
        format!("{pdp}/access/v1/evaluation")
    );
    assert_eq!(
        v["search_subject_endpoint"],
        format!("{pdp}/access/v1/search/subject")
    );
    // Without a default tenant the root paths say where to go.
    let root = send(addr, "GET", "/.well-known/authzen-configuration", &[], "").await;
    assert_eq!(root.status, 404);
    assert!(root.body.contains("/tenants/{tenant}"), "{}", root.body);
    let e = post(
        addr,
        "/access/v1/evaluation",
        &evaluation("erin", "route", "/experts/e-1", "PUT", ""),
    )
    .await;
    assert_eq!(e.status, 404);
    // With one, the root paths are that tenant's PDP.
    let (addr2, _stop2) = start(server.cache.clone(), None, Some("acme")).await;
    let root = send(addr2, "GET", "/.well-known/authzen-configuration", &[], "").await;
    assert_eq!(
        root.json()["policy_decision_point"],
        format!("http://{addr2}")
    );
    let e = post(
        addr2,
        "/access/v1/evaluation",
        &evaluation("erin", "route", "/experts/e-1", "PUT", ""),
    )
    .await;
    assert_eq!(e.json(), json!({"decision": true}));
    server.stop().await;
}

#[tokio::test]
async fn credentials_are_required_when_configured() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let tokens = AdminTokens::parse(
        &format!("{}\n", file_line("acme-secret", "acme", Some("acme-app"))),
        "query-tokens",
    )
    .unwrap();
    let (addr, _stop) = start(server.cache.clone(), Some(tokens), None).await;
    let body = evaluation("erin", "route", "/experts/e-1", "PUT", "").to_string();
    let path = "/tenants/acme/access/v1/evaluation";
    let none = send(addr, "POST", path, &[JSON], &body).await;
    assert_eq!(none.status, 401);
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = send(
        addr,
        "POST",
        path,
        &[JSON, ("Authorization", "Bearer nope")],
        &body,
    )
    .await;
    assert_eq!(wrong.status, 401);
    let ok = send(
        addr,
        "POST",
        path,
        &[JSON, ("Authorization", "Bearer acme-secret")],
        &body,
    )
    .await;
    assert_eq!((ok.status, ok.json()), (200, json!({"decision": true})));
    let other = send(
        addr,
        "POST",
        "/tenants/beta/access/v1/evaluation",
        &[JSON, ("Authorization", "Bearer acme-secret")],
        &body,
    )
    .await;
    assert_eq!(other.status, 403);
    server.stop().await;
}

#[tokio::test]
async fn api_gateway_scenario_with_route_templates() {
    // In the style of the AuthZEN API-gateway interop: a gateway asks, for each call, may
    // this subject call this method on this route template? Decisions from the gateway
    // example policy (docs/semantics.md: a template is a path like any other).
    let server = TestServer::start(&example("gateway.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let mut c = server.client.clone();
    let cases = expectations("gateway.expect.yaml").cases;
    let routes: Vec<_> = cases.iter().filter(|c| c.method.is_some()).collect();
    assert!(routes.len() > 20);
    for case in routes {
        // The same route with its concrete segments replaced by templates wherever the
        // policy matches any segment there decides the same as Check on the template.
        let path = case.path.clone().unwrap();
        let templated: String = path
            .split('/')
            .enumerate()
            .map(|(i, s)| {
                if i > 0 && i % 2 == 0 && !s.is_empty() {
                    format!("{{p{i}}}")
                } else {
                    s.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for p in [path, templated] {
            let grpc = c
                .check(pb::CheckRequest {
                    tenant_id: case.tenant.clone(),
                    subject_id: case.subject.clone(),
                    action: Some(pb::check_request::Action::Route(pb::HttpRoute {
                        method: case.method.clone().unwrap(),
                        path: p.clone(),
                    })),
                    ..Default::default()
                })
                .await;
            let http = post(
                addr,
                &format!("/tenants/{}/access/v1/evaluation", case.tenant),
                &evaluation(
                    &case.subject,
                    "route",
                    &p,
                    case.method.as_deref().unwrap(),
                    "",
                ),
            )
            .await;
            match grpc {
                Ok(r) => assert_eq!(
                    http.json(),
                    json!({"decision": r.into_inner().allowed}),
                    "{p}"
                ),
                Err(_) => assert_eq!(http.status, 400, "{p}"),
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn page_tokens_hosts_and_member_types_are_checked() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let search = |path: &str, token: Option<&str>| {
        let mut v = json!({
            "subject": {"type": "user"},
            "action": {"name": "GET"},
            "resource": {"type": "route", "id": path},
            "page": {"limit": 1},
        });
        if let Some(t) = token {
            v["page"]["token"] = json!(t);
        }
        v
    };
    let first = post(
        addr,
        "/tenants/acme/access/v1/search/subject",
        &search("/health/", None),
    )
    .await
    .json();
    let token = first["page"]["next_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    // Good for the same question only: another route, another tenant, or a token this
    // server never issued (upper case, or a bare subject id in hex) is a 400.
    let same = post(
        addr,
        "/tenants/acme/access/v1/search/subject",
        &search("/health/", Some(&token)),
    )
    .await;
    assert_eq!(same.status, 200, "{}", same.body);
    let other_route = post(
        addr,
        "/tenants/acme/access/v1/search/subject",
        &search("/experts/", Some(&token)),
    )
    .await;
    assert_eq!(other_route.status, 400, "{}", other_route.body);
    let other_tenant = post(
        addr,
        "/tenants/globex/access/v1/search/subject",
        &search("/health/", Some(&token)),
    )
    .await;
    assert_eq!(other_tenant.status, 400, "{}", other_tenant.body);
    for forged in [token.to_uppercase(), "616461".to_owned()] {
        let a = post(
            addr,
            "/tenants/acme/access/v1/search/subject",
            &search("/health/", Some(&forged)),
        )
        .await;
        assert_eq!(a.status, 400, "{forged}: {}", a.body);
    }
    // Discovery names only a plain host and port.
    for bad_host in ["evil.example/x?y#", "a\"b", "::1"] {
        let a = send(
            addr,
            "GET",
            "/.well-known/authzen-configuration/tenants/acme",
            &[("Host", bad_host)],
            "",
        )
        .await;
        assert_eq!(a.status, 400, "{bad_host}: {}", a.body);
    }
    let a = send(
        addr,
        "GET",
        "/.well-known/authzen-configuration/tenants/a.b",
        &[("Host", "[::1]:8080")],
        "",
    )
    .await;
    assert_eq!(
        a.json()["policy_decision_point"],
        "http://[::1]:8080/tenants/a.b"
    );
    // Wrong types are 400, never ignored: a string `options` would have run as execute_all.
    let mut v = json!({
        "subject": {"type": "user", "id": "erin"},
        "action": {"name": "GET"},
        "options": "deny_on_first_deny",
        "evaluations": [{"resource": {"type": "route", "id": "/chats/"}}],
    });
    let a = post(addr, "/tenants/acme/access/v1/evaluations", &v).await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("`options` must be an object"), "{}", a.body);
    v["options"] = json!({});
    v["evaluations"][0]["context"] = json!(5);
    let a = post(addr, "/tenants/acme/access/v1/evaluations", &v)
        .await
        .json();
    assert!(
        a["evaluations"][0]["context"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`evaluations[0].context` must be an object")
    );
    let mut e = evaluation("erin", "route", "/experts/e-1", "PUT", "");
    e["resource"]["properties"] = json!(5);
    let a = post(addr, "/tenants/acme/access/v1/evaluation", &e).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body.contains("`resource.properties` must be an object"),
        "{}",
        a.body
    );
    server.stop().await;
}

#[tokio::test]
async fn action_and_resource_searches_page() {
    let server = TestServer::start(&example("chat-api.yaml")).await;
    let (addr, _stop) = start(server.cache.clone(), None, None).await;
    let path = "/tenants/acme/access/v1/search/resource";
    let question = json!({
        "subject": {"type": "user", "id": "erin"},
        "action": {"name": "GET"},
        "resource": {"type": "route"},
    });
    let whole = post(addr, path, &question).await.json();
    let all = whole["results"].as_array().unwrap().clone();
    assert!(all.len() > 3, "{whole}");
    assert_eq!(whole["page"]["next_token"], "");
    // Two at a time: the pages put together are the whole answer, each at most 2.
    let mut got = Vec::new();
    let mut token = String::new();
    for _ in 0..all.len() {
        let mut q = question.clone();
        q["page"] = json!({"limit": 2, "token": token});
        let page = post(addr, path, &q).await.json();
        let items = page["results"].as_array().unwrap();
        assert!(items.len() <= 2);
        got.extend(items.iter().cloned());
        token = page["page"]["next_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(got, all);
    // A token is good for its own question only.
    let mut q = question.clone();
    q["page"] = json!({"limit": 2});
    let first = post(addr, path, &q).await.json();
    let t = first["page"]["next_token"].as_str().unwrap().to_owned();
    let mut other = question.clone();
    other["action"] = json!({"name": "PUT"});
    other["page"] = json!({"limit": 2, "token": t});
    let refused = post(addr, path, &other).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("page.token"), "{}", refused.body);
    // Action search pages the same way.
    let a = post(
        addr,
        "/tenants/acme/access/v1/search/action",
        &json!({"subject": {"type": "user", "id": "erin"}, "resource": {"type": "route", "id": "/experts/e-1"}, "page": {"limit": 1}}),
    )
    .await
    .json();
    assert_eq!(a["results"].as_array().unwrap().len(), 1);
    assert_ne!(a["page"]["next_token"], "");
    server.stop().await;
}
