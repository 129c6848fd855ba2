//! `systemctl reload` (SIGHUP) of the real binary re-reads its configuration file: the
//! TURN shared secret, the token-auth settings and the other safe keys change without a
//! restart; an invalid file keeps the running settings (logged and counted); keys bound
//! at start are reported as needing a restart.

mod common;
use common::*;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::path::Path;

const TOKEN: &str = "cmVsb2FkdGVzdHRva2VucmVsb2FkdGVzdHRva2Vu";

fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn write_config(path: &Path, state: &Path, extra: &str) {
    std::fs::write(
        path,
        format!(
            "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nstate_dir = {state:?}\nturn_uris = [\"turn:127.0.0.1:3478\"]\n{extra}"
        ),
    )
    .unwrap();
}

async fn credentials(bin: &Bin, token: Option<&str>) -> (u16, Value) {
    let path = match token {
        Some(t) => format!("/turn-credentials?token={t}"),
        None => "/turn-credentials".to_string(),
    };
    let (st, _, b) = http_get(bin.ws, &path).await;
    (st, serde_json::from_str(&b).unwrap_or(Value::Null))
}

async fn add_token(bin: &Bin, secret: &str) -> Value {
    let body = json!({"admin_secret": secret, "janus": "add_token", "token": TOKEN, "transaction": "reload-add-token"});
    let (st, _, b) = http(bin.admin, "POST", "/admin", Some(&body.to_string()), &[]).await;
    assert_eq!(st, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

async fn reloads(bin: &Bin, result: &str) -> f64 {
    metric_at(
        bin.admin,
        &format!("callrelay_gateway_config_reloads_total{{result=\"{result}\"}}"),
    )
    .await
}

fn hup_and_wait(bin: &Bin, parts: &[&str]) -> String {
    let mark = bin.log_len();
    bin.signal("HUP");
    bin.wait_log(mark, parts)
}

#[tokio::test]
async fn sighup_reloads_turn_secret_and_token_auth_and_keeps_running_settings_on_error() {
    let dir = temp_dir();
    let conf = dir.join("gateway.toml");
    let state = dir.join("state");
    write_config(
        &conf,
        &state,
        "turn_secret = \"old-turn-secret\"\nadmin_secret = \"old-admin-secret\"\n",
    );
    let mut bin = Bin::start(&["--config", conf.to_str().unwrap()]);

    // before: no token needed, passwords from the old secret
    let (st, v) = credentials(&bin, None).await;
    assert_eq!(st, 200, "{v}");
    let user = v["username"].as_str().unwrap();
    assert_eq!(v["password"], rest_password("old-turn-secret", user));
    assert_eq!(reloads(&bin, "ok").await, 0.0);

    // new TURN secret, token_auth on, admin secret rotated, and a restart-only key
    write_config(
        &conf,
        &state,
        "turn_secret = \"new-turn-secret\"\nadmin_secret = \"new-admin-secret\"\ntoken_auth = true\nmax_connections = 500\n",
    );
    let warn = hup_and_wait(&bin, &["change only on a restart"]);
    assert!(warn.contains("max_connections"), "{warn}");
    bin.wait_log(0, &["configuration reloaded"]);
    assert_eq!(reloads(&bin, "ok").await, 1.0);
    // token_auth now applies: no token, no credentials
    let (st, _) = credentials(&bin, None).await;
    assert_eq!(st, 403);
    // the old admin secret is refused, the new one stores the token
    let r = add_token(&bin, "old-admin-secret").await;
    assert_eq!(r["janus"], "error", "{r}");
    let r = add_token(&bin, "new-admin-secret").await;
    assert_eq!(r["janus"], "success", "{r}");
    let (st, v) = credentials(&bin, Some(TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    let user = v["username"].as_str().unwrap();
    assert_eq!(v["password"], rest_password("new-turn-secret", user));

    // a broken file: logged, counted, and the running settings stay
    for broken in [
        "turn_secret = 5\n",                      // wrong type
        "turn_secret = \"x\"\nno_such_key = 1\n", // unknown key
        "turn_ttl = 1\nturn_secret = \"x\"\n",    // out of range
    ] {
        write_config(&conf, &state, broken);
        let before = reloads(&bin, "error").await;
        let line = hup_and_wait(&bin, &["configuration reload failed"]);
        assert!(
            line.contains("ERROR") && line.contains("gateway.toml"),
            "{line}"
        );
        assert!(!line.contains("new-turn-secret"), "secret logged: {line}");
        assert_eq!(reloads(&bin, "error").await, before + 1.0);
        let (st, v) = credentials(&bin, Some(TOKEN)).await;
        assert_eq!(st, 200, "{broken}: {v}");
        let user = v["username"].as_str().unwrap();
        assert_eq!(
            v["password"],
            rest_password("new-turn-secret", user),
            "{broken}"
        );
        assert_eq!(credentials(&bin, None).await.0, 403, "{broken}");
    }
    assert_eq!(reloads(&bin, "ok").await, 1.0);
    assert!(
        !bin.log().contains("new-turn-secret") && !bin.log().contains("new-admin-secret"),
        "a secret reached the log"
    );
    bin.signal("TERM");
    assert!(bin.wait_exit(15).success());
}
