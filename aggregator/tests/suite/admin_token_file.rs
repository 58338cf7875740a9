//! The admin token from a file (a mounted Secret) is read again when the
//! file changes: a rotated token takes effect without a restart and the old
//! one stops; a change that cannot be used leaves the token in force.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aggregator::security::tokens::new_token;
use support::{local, TestApp};

/// Replaces the file at once, as the kubelet's update of a Secret does.
fn replace(path: &Path, token: &str, mode: u32) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, token).unwrap();
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn status_with(app: &TestApp, token: &str) -> u16 {
    app.call(reqwest::Method::GET, "/v1/admin/bills", Some(token), None)
        .await
        .0
}

#[tokio::test]
async fn a_rotated_admin_token_file_takes_effect_without_a_restart_and_the_old_token_stops() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    let (first, second, third) = (new_token("cma"), new_token("cma"), new_token("cma"));
    replace(&file, &first, 0o600);
    let mut config = support::config(dir.path().join("core-meter.sqlite"), None);
    config.admin_token = Some(
        aggregator::config::read_admin_token_file(&file)
            .unwrap()
            .into(),
    );
    config.admin_token_file = Some(file.clone());
    let app = TestApp::spawn_with(config, local("2026-03-10T12:00:00")).await;
    assert_eq!(status_with(&app, &first).await, 200);
    assert_eq!(status_with(&app, &second).await, 401);

    replace(&file, &format!("{second}\n"), 0o600);
    app.settled().await;
    assert_eq!(status_with(&app, &second).await, 200, "the new token works");
    assert_eq!(status_with(&app, &first).await, 401, "the old token stops");

    // A file anyone may read is refused: the token in force stays.
    replace(&file, &third, 0o644);
    app.settled().await;
    assert_eq!(status_with(&app, &third).await, 401);
    assert_eq!(status_with(&app, &second).await, 200);
    // Made private, the same content is taken.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    app.settled().await;
    assert_eq!(
        status_with(&app, &third).await,
        200,
        "the fixed file is read"
    );
    app.stop().await;
}
