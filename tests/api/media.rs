//! Downloaded media: streamed to disk (a large file arrives whole, never held in
//! memory), private to the service (with the store), skipped below the
//! free-space floor so the journal keeps its room, and pruned after
//! `MEDIA_RETENTION_SECS`.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;

const SECRET: &str = "app-secret";

fn image_message(media_id: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>\
         <CreateTime>1409659813</CreateTime><MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://p]]></PicUrl>\
         <MediaId><![CDATA[{media_id}]]></MediaId><MsgId>{msg_id}</MsgId><AgentID>1000002</AgentID></xml>"
    )
}

async fn spawn_media_app(wecom: &FakeWeCom, receiver: &ForwardReceiver, extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", SECRET),
        ("WECOM_AGENT_ID", "1000002"),
        ("FORWARD_URL", receiver.url.as_str()),
        ("FORWARD_SECRET", receiver.secret.as_str()),
    ];
    settings.extend_from_slice(extra);
    spawn_app_with(&settings).await
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_media_are_not_downloaded_and_the_record_says_why() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    wecom.serve_media("MEDIA-FLOOR", b"\x89PNG not downloaded");
    // No volume is 100 % free: the floor is reached.
    let app = spawn_media_app(&wecom, &receiver, &[("MEDIA_MIN_FREE_PERCENT", "100")]).await;
    assert_eq!(app.post_xml(&image_message("MEDIA-FLOOR", 501)).await, 200);
    assert_eq!(app.post_text("still accepted", 502).await, 200, "callbacks go on");
    let delivered = receiver.wait_for(2, Duration::from_secs(15)).await;
    let image = delivered.iter().find(|d| d.message_id == "app:msg:501").expect("the image record");
    assert_eq!(image.record["media_id"], "MEDIA-FLOOR");
    assert!(image.record["media_path"].is_null(), "{}", image.record);
    let reason = image.record["media_skipped"].as_str().expect("the reason");
    assert!(reason.starts_with("disk below floor") && reason.contains("MEDIA_MIN_FREE_PERCENT is 100 %"), "{reason}");
    assert!(wecom.calls("media/get").is_empty(), "nothing was downloaded");
    let text = delivered.iter().find(|d| d.message_id == "app:msg:502").expect("the text record");
    assert!(text.record.get("media_skipped").is_none(), "{}", text.record);
    app.wait_until_outbox_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_media_is_streamed_whole_into_a_private_file_beside_a_private_store() {
    let (wecom, receiver) = (FakeWeCom::start().await, ForwardReceiver::start().await);
    let bytes: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    wecom.serve_media("MEDIA-BIG", &bytes);
    let app = spawn_media_app(&wecom, &receiver, &[]).await;
    assert_eq!(app.post_xml(&image_message("MEDIA-BIG", 601)).await, 200);
    let delivered = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert!(delivered[0].record.get("media_skipped").is_none(), "{}", delivered[0].record);
    let path = std::path::PathBuf::from(delivered[0].record["media_path"].as_str().expect("media_path"));
    assert!(std::fs::read(&path).expect("the file") == bytes, "the file differs from what WeCom served");
    let day = path.parent().expect("day directory");
    let leftovers: Vec<_> = std::fs::read_dir(day).expect("day").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left: {leftovers:?}");

    // Modes are set explicitly, whatever this test process's umask.
    assert_eq!(mode(&path), 0o640, "media: owner and group read");
    assert_eq!(mode(day), 0o750);
    let data = app.dir.path().join("data");
    assert_eq!(mode(&data), 0o700, "DATA_DIR");
    let store_files: Vec<_> = std::fs::read_dir(&data).expect("DATA_DIR").flatten().map(|e| e.path()).collect();
    assert!(store_files.iter().any(|p| p.ends_with(wechat_api::testing::store::DATABASE_FILE)), "{store_files:?}");
    for file in &store_files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_past_their_retention_are_pruned_with_their_empty_day_directories() {
    let uploads = tempfile::tempdir().expect("uploads");
    let old_day = uploads.path().join("2020/01/02");
    std::fs::create_dir_all(&old_day).expect("old day");
    let old = old_day.join("app_msg_1.jpg");
    let file = std::fs::File::create(&old).expect("old file");
    file.set_modified(SystemTime::now() - Duration::from_secs(40 * 24 * 3600)).expect("backdate");
    drop(file);
    let young = uploads.path().join("2020/01/03/app_msg_2.jpg");
    std::fs::create_dir_all(young.parent().expect("day")).expect("young day");
    std::fs::write(&young, b"kept").expect("young file");
    let app = spawn_app_with(&[
        ("UPLOAD_DIR", uploads.path().to_str().expect("UTF-8 path")),
        ("MEDIA_RETENTION_SECS", "2592000"),
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while old_day.exists() {
        assert!(Instant::now() < deadline, "{} was not pruned", old.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(young.exists(), "a file within its retention is kept");
    assert_eq!(app.metric("wechat_api_media_pruned_total{kind=\"file\"}").await, 1.0);
    assert_eq!(app.metric("wechat_api_media_pruned_total{kind=\"directory\"}").await, 1.0);
}
