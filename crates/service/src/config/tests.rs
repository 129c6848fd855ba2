use super::*;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Schema {
    realm: Option<String>,
    #[serde(default)]
    listen: Vec<String>,
    workers: Option<u32>,
}

fn temp_file(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "callrelay-service-config-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    (dir, p)
}

#[test]
fn read_toml_parses_the_schema() {
    let (dir, p) = temp_file(
        "ok.toml",
        "realm = \"r\"\nlisten = [\"127.0.0.1:1\"]\nworkers = 2\n",
    );
    let s: Schema = read_toml(&p).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    assert_eq!(s.realm.as_deref(), Some("r"));
    assert_eq!(s.listen, ["127.0.0.1:1"]);
    assert_eq!(s.workers, Some(2));
}

#[test]
fn file_errors_name_the_file_and_the_key() {
    // an unknown key: the file, the key and its line
    let (dir, p) = temp_file("unknown.toml", "realm = \"r\"\nrealmm = \"x\"\n");
    let e = read_toml::<Schema>(&p).unwrap_err().to_string();
    std::fs::remove_dir_all(dir).unwrap();
    assert!(
        e.starts_with(&format!("config file {}: ", p.display())),
        "{e}"
    );
    assert!(e.contains("realmm") && e.contains("line 2"), "{e}");
    assert!(!e.ends_with('\n'), "{e:?}");
    // a mistyped key
    let e = parse_toml::<Schema>(Path::new("t.toml"), "workers = \"two\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("config file t.toml: "), "{e}");
    assert!(e.contains("workers"), "{e}");
    // not TOML
    let e = parse_toml::<Schema>(Path::new("t.toml"), "listen = [\n").unwrap_err();
    assert!(matches!(&e, ConfigError::File { path, .. } if path == Path::new("t.toml")));
    // a file that is not there
    let missing = Path::new("/nonexistent/callrelay.toml");
    let e = read_toml::<Schema>(missing).unwrap_err().to_string();
    assert!(
        e.starts_with("config file /nonexistent/callrelay.toml: "),
        "{e}"
    );
}

#[test]
fn key_errors_name_the_key() {
    let e = ConfigError::key("relay_ip", "set `relay_ip`");
    assert_eq!(e.to_string(), "config key `relay_ip`: set `relay_ip`");
    assert!(matches!(
        e,
        ConfigError::Key {
            key: "relay_ip",
            ..
        }
    ));
}

#[test]
fn flags_win_over_the_file_over_the_default() {
    assert_eq!(pick(Some(1), Some(2), 3), 1);
    assert_eq!(pick(None, Some(2), 3), 2);
    assert_eq!(pick(None, None, 3), 3);
    let file = vec!["f".to_string()];
    assert_eq!(pick_list(vec!["c".to_string()], file.clone()), ["c"]);
    assert_eq!(pick_list(Vec::new(), file), ["f"]);
    assert!(pick_list::<u8>(Vec::new(), Vec::new()).is_empty());
}

#[test]
fn out_of_range_names_the_key_the_value_and_the_range() {
    let msg = |r: Result<u64, ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(in_range("turn_ttl", 59, 60..=604_800, " seconds")),
        "config key `turn_ttl`: 59 is out of range; use 60..=604800 seconds"
    );
    assert_eq!(
        msg(in_range("workers", 0, 1.., "")),
        "config key `workers`: 0 is out of range; use at least 1"
    );
    assert_eq!(
        msg(in_range("a", 10, ..=9, " bytes")),
        "config key `a`: 10 is out of range; use at most 9 bytes"
    );
    assert_eq!(
        msg(in_range("a", 9, 1..9, "")),
        "config key `a`: 9 is out of range; use 1..9"
    );
    assert_eq!(
        msg(in_range("a", 9, ..9, "")),
        "config key `a`: 9 is out of range; use less than 9"
    );
    // the bounds themselves are accepted
    assert_eq!(in_range("a", 60u64, 60..=604_800, "").unwrap(), 60);
    assert_eq!(
        in_range("a", 604_800u64, 60..=604_800, "").unwrap(),
        604_800
    );
    assert_eq!(in_range("a", u32::MAX, 1.., "").unwrap(), u32::MAX);
    assert_eq!(in_range("a", 9, ..=9, "").unwrap(), 9);
}

#[test]
fn socket_addresses_name_the_key_and_the_value() {
    let list = ["127.0.0.1:3478".to_string(), "[::1]:3478".to_string()];
    let got = socket_addrs("listen", &list).unwrap();
    assert_eq!(got[0].to_string(), "127.0.0.1:3478");
    assert_eq!(got[1].to_string(), "[::1]:3478");
    let e = socket_addrs("listen", &["127.0.0.1:1", "nope"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config key `listen`: `nope` is not ADDR:PORT (IPv6 as [::1]:3478)"
    );
    // an IPv6 address needs its brackets
    assert!(socket_addr("metrics_listen", "::1:9641").is_err());
}

#[test]
fn cidr_parse() {
    assert!("10.0.0.0/8".parse::<Cidr>().is_ok());
    assert!("::1".parse::<Cidr>().is_ok());
    assert!(
        "::/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("2001:db8::1".parse().unwrap())
    );
    assert!(
        "0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("1.2.3.4".parse().unwrap())
    );
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("banana/8".parse::<Cidr>().is_err());
    assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    assert_eq!(
        "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
        "192.0.2.7/32"
    );
    assert_eq!(
        " ::1 / 128 ".trim().parse::<Cidr>().unwrap().to_string(),
        "::1/128"
    );
}

#[test]
fn cidr_errors_say_what_to_write() {
    let e = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
    assert_eq!(
        e("10.0.0.1/8"),
        "`10.0.0.1/8` has host bits set; write 10.0.0.0/8"
    );
    assert_eq!(
        e("2001:db8::1/32"),
        "`2001:db8::1/32` has host bits set; write 2001:db8::/32"
    );
    assert_eq!(
        e("10.0.0.0/33"),
        "`10.0.0.0/33`: the prefix length must be 0..=32"
    );
    assert_eq!(e("::/129"), "`::/129`: the prefix length must be 0..=128");
    assert!(e("proxy.example").contains("not an address"));
    let err = cidrs("trusted_proxies", &["10.0.0.0/8", "10.0.0.1/8"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "config key `trusted_proxies`: `10.0.0.1/8` has host bits set; write 10.0.0.0/8"
    );
}

#[test]
fn cidr_contains() {
    let net = |s: &str| s.parse::<Cidr>().unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let v4 = net("10.1.0.0/16");
    for a in ["10.1.0.0", "10.1.255.255", "::ffff:10.1.0.1"] {
        assert!(v4.contains(ip(a)), "{a}");
    }
    for a in ["10.2.0.1", "10.0.255.255", "::a01:1", "2001:db8::1"] {
        assert!(!v4.contains(ip(a)), "{a}");
    }
    let v6 = net("2001:db8::/32");
    assert!(v6.contains(ip("2001:db8:ffff::1")));
    assert!(!v6.contains(ip("2001:db9::1")));
    assert!(!v6.contains(ip("32.1.13.184")));
    // an IPv4-mapped range written as IPv6 matches mapped addresses as given
    let mapped = net("::ffff:0:0/96");
    assert!(mapped.contains(ip("::ffff:203.0.113.5")));
    assert!(!mapped.contains(ip("203.0.113.5")));
    // /0 and a full-length prefix
    assert!(net("0.0.0.0/0").contains(ip("255.255.255.255")));
    assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
    assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
}
