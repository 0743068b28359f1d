//! The axum `Router`: thin handlers over [`Tracker`]. Every tracker error is
//! HTTP 200 with a bencoded `failure reason` — the convention clients show
//! to their users — never a 500.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::{response, stats, Tracker};

/// The tracker's routes: `/announce`, `/scrape`, `/<passkey>/announce`,
/// `/<passkey>/scrape`, `/stats` (also `/`), `/stats.json`, `/metrics`. Needs a
/// `ConnectInfo<SocketAddr>` request extension (the server adds it; tests
/// use `MockConnectInfo`).
pub fn app(tracker: Arc<Tracker>) -> Router {
    Router::new()
        .route("/announce", get(announce))
        .route("/scrape", get(scrape))
        .route("/{key}/announce", get(keyed_announce))
        .route("/{key}/scrape", get(keyed_scrape))
        .route("/", get(stats::html))
        .route("/stats", get(stats::html))
        .route("/stats.json", get(stats::json))
        .route("/metrics", get(stats::metrics))
        .fallback(not_found)
        .with_state(tracker)
}

/// The reply body: the bencoded reply, or the bencoded `failure reason`
/// (counted). Also used by the server's fast path (`h1`).
pub(crate) fn reply_body(tracker: &Tracker, reply: Result<Vec<u8>, String>) -> Vec<u8> {
    reply.unwrap_or_else(|reason| {
        tracker.count_failure();
        response::failure(&reason)
    })
}

fn bencoded(tracker: &Tracker, reply: Result<Vec<u8>, String>) -> Response {
    ([(CONTENT_TYPE, "text/plain")], reply_body(tracker, reply)).into_response()
}

/// An announce and its reply (also the server's path for `/announce` on
/// connections hyper serves).
pub(crate) async fn announce_reply(
    t: &Tracker,
    key: Option<&str>,
    query: &str,
    remote: SocketAddr,
    headers: &HeaderMap,
) -> Response {
    bencoded(t, t.announce_async(key, query, remote, headers).await)
}

async fn announce(
    State(t): State<Arc<Tracker>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    announce_reply(&t, None, uri.query().unwrap_or(""), remote, &headers).await
}

/// The passkey path segment; one that is not even UTF-8 is simply unknown
/// (passkeys are ASCII), never an HTTP error.
fn passkey(key: Result<Path<String>, PathRejection>) -> String {
    key.map(|Path(k)| k).unwrap_or_default()
}

async fn keyed_announce(
    State(t): State<Arc<Tracker>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let key = passkey(key);
    announce_reply(&t, Some(&key), uri.query().unwrap_or(""), remote, &headers).await
}

async fn scrape(State(t): State<Arc<Tracker>>, uri: Uri) -> Response {
    let reply = t.scrape_async(None, uri.query().unwrap_or("")).await;
    bencoded(&t, reply)
}

async fn keyed_scrape(
    State(t): State<Arc<Tracker>>,
    Path(key): Path<String>,
    uri: Uri,
) -> Response {
    let reply = t.scrape_async(Some(&key), uri.query().unwrap_or("")).await;
    bencoded(&t, reply)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: this is a BitTorrent tracker (/announce, /scrape, /stats)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, MemoryStore};
    use axum::body::Body;
    use axum::extract::connect_info::MockConnectInfo;
    use axum::http::{HeaderName, Request};
    use http_body_util::BodyExt;
    use torrent_format::bencode::{decode, Value};
    use torrent_format::magnet::percent_encode_bytes;
    use tower::ServiceExt;

    fn tracker(config: Config) -> Arc<Tracker> {
        Arc::new(Tracker::new(config, Box::<MemoryStore>::default()).unwrap())
    }

    async fn get_from(
        app: &Router,
        from: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Vec<u8>) {
        let remote: SocketAddr = from.parse().unwrap();
        let mut req = Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app
            .clone()
            .layer(MockConnectInfo(remote))
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    fn q(hash: u8, peer: u8, port: u16, left: u64, extra: &str) -> String {
        format!(
            "info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}{extra}",
            percent_encode_bytes(&[hash; 20]),
            percent_encode_bytes(&[peer; 20])
        )
    }

    fn failure_of(body: &[u8]) -> Option<String> {
        match decode(body).ok()?.get("failure reason")? {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// A configuration asking for unbounded replies is capped, and a
    /// client asking for four billion peers gets the cap, not a panic.
    #[tokio::test]
    async fn numwant_is_capped_whatever_the_configuration() {
        let t = tracker(Config {
            default_numwant: usize::MAX,
            max_numwant: usize::MAX,
            ..Config::default()
        });
        assert_eq!(t.config().max_numwant, crate::MAX_NUMWANT);
        assert_eq!(t.config().default_numwant, crate::MAX_NUMWANT);
        let app = app(t);
        for peer in 1..=4u8 {
            // The last one leaves numwant to the (capped) default.
            let extra = if peer < 4 { "&numwant=4000000000" } else { "" };
            let query = q(1, peer, 6880 + u16::from(peer), 5, extra);
            let (s, body) =
                get_from(&app, "10.0.0.1:5000", &format!("/announce?{query}"), &[]).await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(failure_of(&body), None);
            let peers = match decode(&body).unwrap().get("peers") {
                Some(Value::Bytes(b)) => b.len() / 6,
                other => panic!("peers: {other:?}"),
            };
            assert_eq!(peers, usize::from(peer) - 1);
        }
    }

    #[tokio::test]
    async fn announce_scrape_and_stats() {
        let t = tracker(Config::default());
        let app = app(t.clone());
        let (s, body) = get_from(
            &app,
            "10.0.0.1:5000",
            &format!("/announce?{}", q(1, 1, 6881, 0, "&event=started")),
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let v = decode(&body).unwrap();
        assert_eq!(v.get("complete"), Some(&Value::Int(1)));
        assert_eq!(v.get("peers"), Some(&Value::Bytes(vec![])));
        assert_eq!(v.get("interval"), Some(&Value::Int(1800)));

        let (_, body) = get_from(
            &app,
            "10.0.0.2:5000",
            &format!("/announce?{}", q(1, 2, 7000, 100, "&event=started")),
            &[],
        )
        .await;
        let v = decode(&body).unwrap();
        assert_eq!(
            v.get("peers"),
            Some(&Value::Bytes(vec![10, 0, 0, 1, 0x1a, 0xe1]))
        );
        assert_eq!(
            (v.get("complete"), v.get("incomplete")),
            (Some(&Value::Int(1)), Some(&Value::Int(1)))
        );

        // Dictionary form.
        let (_, body) = get_from(
            &app,
            "10.0.0.2:5000",
            &format!("/announce?{}", q(1, 2, 7000, 100, "&compact=0")),
            &[],
        )
        .await;
        let Some(Value::List(peers)) = decode(&body).unwrap().get("peers").cloned() else {
            panic!()
        };
        assert_eq!(
            peers[0].get("ip"),
            Some(&Value::Bytes(b"10.0.0.1".to_vec()))
        );

        // IPv6 announcers get peers6.
        let (_, body) = get_from(
            &app,
            "[2001:db8::1]:5000",
            &format!("/announce?{}", q(1, 3, 7001, 100, "")),
            &[],
        )
        .await;
        let v = decode(&body).unwrap();
        assert_eq!(v.get("peers6"), Some(&Value::Bytes(vec![])));
        let (_, body) = get_from(
            &app,
            "[2001:db8::2]:5000",
            &format!("/announce?{}", q(1, 4, 7002, 0, "")),
            &[],
        )
        .await;
        let mut want = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        want.extend_from_slice(&7001u16.to_be_bytes());
        assert_eq!(
            decode(&body).unwrap().get("peers6"),
            Some(&Value::Bytes(want))
        );

        get_from(
            &app,
            "10.0.0.2:5000",
            &format!("/announce?{}", q(1, 2, 7000, 0, "&event=completed")),
            &[],
        )
        .await;
        let (_, body) = get_from(
            &app,
            "10.0.0.9:1",
            &format!(
                "/scrape?info_hash={}&info_hash={}",
                percent_encode_bytes(&[1; 20]),
                percent_encode_bytes(&[7; 20])
            ),
            &[],
        )
        .await;
        let v = decode(&body).unwrap();
        let files = v.get("files").unwrap();
        let Value::Dict(files) = files else { panic!() };
        let one = &files[&vec![1u8; 20]];
        assert_eq!(one.get("complete"), Some(&Value::Int(3)));
        assert_eq!(one.get("incomplete"), Some(&Value::Int(1)));
        assert_eq!(one.get("downloaded"), Some(&Value::Int(1)));
        assert_eq!(files[&vec![7u8; 20]].get("complete"), Some(&Value::Int(0)));

        let (s, body) = get_from(&app, "10.0.0.9:1", "/stats.json", &[]).await;
        assert_eq!(s, StatusCode::OK);
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["swarms"], 1);
        assert_eq!(j["seeders"], 3);
        assert_eq!(j["leechers"], 1);
        assert_eq!(j["completed"], 1);
        assert_eq!(j["announces_total"], 6);
        let (_, body) = get_from(&app, "10.0.0.9:1", "/metrics", &[]).await;
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("shoal_tracker_peers{kind=\"seeder\"} 3"),
            "{text}"
        );
        assert!(text.contains("shoal_build_info{version=\""), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_open_fds "), "{text}");
        // The page, at /stats and at /: each figure's cell is named by its
        // /stats.json key, which its script refreshes.
        for path in ["/stats", "/"] {
            let (s, body) = get_from(&app, "10.0.0.9:1", path, &[]).await;
            assert_eq!(s, StatusCode::OK);
            let page = String::from_utf8(body).unwrap();
            assert!(page.contains("<h1>shoal tracker</h1>"), "{page}");
            assert!(page.contains("setInterval(refresh, 3000)"), "{page}");
            for key in [
                "swarms",
                "seeders",
                "leechers",
                "completed",
                "announces_total",
            ] {
                assert!(page.contains(&format!("<td id={key}>")), "{key}");
                assert!(j.get(key).is_some(), "{key} in stats.json");
            }
            assert!(page.contains("<td id=seeders>3</td>"), "{page}");
        }
        // The biggest swarms' columns have the page's names too.
        assert_eq!(j["top_swarms"][0]["completed"], 1);

        // stopped removes at once.
        get_from(
            &app,
            "10.0.0.1:5000",
            &format!("/announce?{}", q(1, 1, 6881, 0, "&event=stopped")),
            &[],
        )
        .await;
        let (_, body) = get_from(&app, "10.0.0.9:1", "/stats.json", &[]).await;
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["seeders"], 2);
        let (s, _) = get_from(&app, "10.0.0.9:1", "/nope", &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn malformed_requests_get_a_failure_reason_not_an_error_status() {
        let app = app(tracker(Config::default()));
        let h = percent_encode_bytes(&[1; 20]);
        let cases = [
            ("/announce".to_string(), "missing 'info_hash'"),
            (
                format!("/announce?info_hash={h}&port=1&left=0"),
                "missing 'peer_id'",
            ),
            (
                format!("/announce?info_hash=%zz&peer_id={h}&port=1&left=0"),
                "malformed percent-encoding",
            ),
            (
                format!("/announce?info_hash={h}&peer_id=short&port=1&left=0"),
                "'peer_id' must be exactly 20 bytes",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={h}&port=0&left=0"),
                "port 0",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={h}&port=70000&left=0"),
                "out of range",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={h}&port=1&left=lots"),
                "'left' is not",
            ),
            (
                format!("/announce?info_hash={h}&peer_id={h}&port=1&left=0&uploaded=-5"),
                "'uploaded' is not",
            ),
            (
                format!(
                    "/announce?info_hash={h}&peer_id={h}&port=1&left=0&pad={}",
                    "x".repeat(9000)
                ),
                "query too long",
            ),
            ("/scrape".to_string(), "full scrapes are not served"),
            (
                format!("/scrape?info_hash={h}&info_hash=abc"),
                "'info_hash' must be exactly 20 bytes",
            ),
            (
                format!("/key/announce?{}", q(1, 1, 1, 0, "")),
                "passkeys are not enabled",
            ),
        ];
        for (uri, want) in cases {
            let (s, body) = get_from(&app, "10.0.0.1:1", &uri, &[]).await;
            assert_eq!(s, StatusCode::OK, "{uri}");
            let reason =
                failure_of(&body).unwrap_or_else(|| panic!("{uri}: no failure reason in {body:?}"));
            assert!(reason.contains(want), "{uri}: {reason}");
        }
    }

    #[tokio::test]
    async fn real_ip_header_and_ip_param() {
        let config = Config {
            real_ip_header: Some(HeaderName::from_static("x-forwarded-for")),
            ..Config::default()
        };
        let app = app(tracker(config));
        let uri = format!("/announce?{}", q(1, 1, 1000, 0, "&ip=1.2.3.4"));
        let (_, body) = get_from(&app, "127.0.0.1:1", &uri, &[]).await;
        assert!(failure_of(&body)
            .unwrap()
            .contains("missing x-forwarded-for header"));
        let (_, body) = get_from(
            &app,
            "127.0.0.1:1",
            &uri,
            &[("x-forwarded-for", "6.6.6.6, junk")],
        )
        .await;
        assert!(failure_of(&body)
            .unwrap()
            .contains("does not end with an IP address"));
        let (_, body) = get_from(
            &app,
            "127.0.0.1:1",
            &uri,
            &[("x-forwarded-for", "6.6.6.6, 10.1.1.1")],
        )
        .await;
        assert!(failure_of(&body).is_none());
        // The next peer sees 10.1.1.1 (the proxy's entry), not 6.6.6.6 nor the ip param.
        let uri2 = format!("/announce?{}", q(1, 2, 2000, 5, ""));
        let (_, body) = get_from(
            &app,
            "127.0.0.1:1",
            &uri2,
            &[("x-forwarded-for", "10.1.1.2")],
        )
        .await;
        assert_eq!(
            decode(&body).unwrap().get("peers"),
            Some(&Value::Bytes(vec![10, 1, 1, 1, 0x03, 0xe8]))
        );

        let app = app_with_trusted_ip();
        get_from(&app, "127.0.0.1:1", &uri, &[]).await;
        let (_, body) = get_from(&app, "127.0.0.1:1", &uri2, &[]).await;
        assert_eq!(
            decode(&body).unwrap().get("peers"),
            Some(&Value::Bytes(vec![1, 2, 3, 4, 0x03, 0xe8]))
        );
    }

    fn app_with_trusted_ip() -> Router {
        app(tracker(Config {
            trust_ip_param: true,
            ..Config::default()
        }))
    }

    #[tokio::test]
    async fn whitelist_and_passkeys_reload() {
        let dir = tempfile::tempdir().unwrap();
        let wl = dir.path().join("whitelist");
        let keys = dir.path().join("keys");
        std::fs::write(
            &wl,
            format!("# allowed\n{}\n", torrent_format::InfoHash([1; 20])),
        )
        .unwrap();
        std::fs::write(&keys, "alice\n").unwrap();
        let t = tracker(Config {
            whitelist: Some(wl.clone()),
            keys: Some(keys.clone()),
            ..Config::default()
        });
        let app = app(t.clone());
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/alice/announce?{}", q(1, 1, 1, 0, "")),
            &[],
        )
        .await;
        assert!(failure_of(&body).is_none(), "{body:?}");
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/alice/announce?{}", q(2, 1, 1, 0, "")),
            &[],
        )
        .await;
        assert!(failure_of(&body).unwrap().contains("not registered"));
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/bob/announce?{}", q(1, 1, 1, 0, "")),
            &[],
        )
        .await;
        assert_eq!(failure_of(&body).unwrap(), "unknown passkey");
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/announce?{}", q(1, 1, 1, 0, "")),
            &[],
        )
        .await;
        assert!(failure_of(&body).unwrap().contains("needs a passkey"));
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/bob/scrape?info_hash={}", percent_encode_bytes(&[1; 20])),
            &[],
        )
        .await;
        assert_eq!(failure_of(&body).unwrap(), "unknown passkey");

        std::fs::write(&keys, "alice\nbob\n").unwrap();
        std::fs::write(
            &wl,
            format!(
                "{}\n{}\n",
                torrent_format::InfoHash([1; 20]),
                torrent_format::InfoHash([2; 20])
            ),
        )
        .unwrap();
        t.reload().unwrap();
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/bob/announce?{}", q(2, 1, 1, 0, "")),
            &[],
        )
        .await;
        assert!(failure_of(&body).is_none(), "{body:?}");
        // A broken file is reported and the old lists stay.
        std::fs::write(&wl, "not-a-hash\n").unwrap();
        let e = t.reload().unwrap_err().to_string();
        assert!(
            e.ends_with(
                ":1: an info hash is 40 hex digits or 32 base32 characters, not 10 characters"
            ),
            "{e}"
        );
        let (_, body) = get_from(
            &app,
            "10.0.0.1:1",
            &format!("/bob/announce?{}", q(2, 1, 1, 0, "")),
            &[],
        )
        .await;
        assert!(failure_of(&body).is_none());
    }
}
