mod support;

use http::Method;
use support::*;

#[tokio::test]
async fn forwards_method_path_query_headers_and_body_both_ways() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"all\"\nmatch = { path_prefix = \"/\" }\nrate = \"1000/s\"\n",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/api/items?x=1&y=two", sluice.data_addr);
    let r = send(
        &c,
        Method::PUT,
        &url,
        &[
            ("x-custom", "v1"),
            ("host", "shop.example:8080"),
            ("connection", "x-secret"),
            ("x-secret", "s"),
            ("proxy-authorization", "Basic Zm9v"),
        ],
        "hello body",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello body");
    assert_eq!(r.header("x-backend-saw-path"), "/api/items?x=1&y=two");
    assert!(
        r.headers.get("x-hop").is_none(),
        "hop-by-hop header named by Connection leaked to the client"
    );
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.header("ratelimit-policy"), "\"all\";q=1000;w=1");
    assert!(
        r.header("ratelimit").starts_with("\"all\";r="),
        "{}",
        r.header("ratelimit")
    );

    let seen = backend.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.headers["x-custom"], "v1");
    assert_eq!(seen.headers["host"], "shop.example:8080", "Host is preserved");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example:8080");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen.headers.get("x-secret").is_none(),
        "header named by Connection must be stripped"
    );
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert_eq!(seen.body, "hello body");
    sluice.shutdown().await;
}
