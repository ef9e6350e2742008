//! Unit tests of the origin's helpers.
use super::*;

#[test]
fn bodies_are_prefixes_of_one_pattern() {
    assert_eq!(&body_bytes(30)[..], b"abcdefghijklmnopqrstuvwxyzabcd");
    assert_eq!(body_bytes(0).len(), 0);
    let big = body_bytes(SHARED + 7);
    assert_eq!(big.len(), SHARED + 7);
    assert_eq!(big.slice(..SHARED), body_bytes(SHARED));
    assert_eq!(body_bytes(usize::MAX).len(), MAX_BODY);
}

#[test]
fn validators() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let h = |pairs: &[(&str, &str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    };
    assert!(!fresh(&h(&[]), "\"a\"", t0));
    assert!(fresh(&h(&[("if-none-match", "\"a\"")]), "\"a\"", t0));
    assert!(fresh(&h(&[("if-none-match", "W/\"a\"")]), "\"a\"", t0));
    assert!(fresh(&h(&[("if-none-match", "\"x\", \"a\"")]), "\"a\"", t0));
    assert!(fresh(
        &h(&[("if-none-match", "\"x\""), ("if-none-match", "\"a\"")]),
        "\"a\"",
        t0
    ));
    assert!(fresh(&h(&[("if-none-match", "*")]), "\"a\"", t0));
    assert!(!fresh(&h(&[("if-none-match", "\"b\"")]), "\"a\"", t0));
    let date = httpdate::fmt_http_date(t0);
    assert!(fresh(&h(&[("if-modified-since", &date)]), "\"a\"", t0));
    let earlier = httpdate::fmt_http_date(t0 - Duration::from_secs(1));
    assert!(!fresh(&h(&[("if-modified-since", &earlier)]), "\"a\"", t0));
    // If-None-Match wins over If-Modified-Since.
    assert!(!fresh(
        &h(&[("if-none-match", "\"b\""), ("if-modified-since", &date)]),
        "\"a\"",
        t0
    ));
    assert!(!fresh(&h(&[("if-modified-since", "garbage")]), "\"a\"", t0));
}

#[test]
fn stats_count_per_kind() {
    let s = OriginStats::default();
    s.hit(Kind::Key);
    s.hit(Kind::Key);
    s.hit(Kind::Slow);
    assert_eq!(s.get("key"), 2);
    assert_eq!(s.get("slow"), 1);
    assert_eq!(s.get("nope"), 0);
    assert_eq!(s.total(), 3);
    assert_eq!(s.snapshot().len(), KINDS.len());
    s.reset();
    assert_eq!(s.total(), 0);
}

#[test]
fn debug_hides_the_token() {
    let c = OriginConfig {
        admin_token: Some("s3cret".into()),
        ..Default::default()
    };
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[tokio::test]
async fn a_streamed_body_has_exactly_n_bytes_in_bounded_frames() {
    use http_body_util::BodyExt;
    for n in [0u64, 1, 65_536, (SHARED as u64) * 3 + 5] {
        let mut body = forwarding::stream(n, 60).into_body();
        let (mut total, mut largest) = (0u64, 0usize);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            largest = largest.max(data.len());
            total += data.len() as u64;
        }
        assert_eq!(total, n, "a /stream/{n} body");
        assert!(largest <= 64 << 10, "frames stay 64 KiB at most");
    }
}
