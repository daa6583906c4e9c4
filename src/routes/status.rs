//! `GET /`: a small status page for people. Server-rendered, no external assets,
//! every value HTML-escaped; readable on a phone. For insiders only
//! (`TRUSTED_NETWORKS` or the admin bearer); a stranger gets 404.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::clock::rfc3339;
use crate::health::Status;
use crate::routes::surface::{audience, Audience};
use crate::routes::{not_found, AppState};
use crate::store::sends::SendStatus;

/// Sends listed on the page, newest first.
const RECENT_SENDS: usize = 20;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn label(status: Status) -> (&'static str, &'static str) {
    match status {
        Status::Pass => ("pass", "ok"),
        Status::Warn => ("warn", "warn"),
        Status::Fail => ("fail", "fail"),
    }
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(crate) async fn page(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match audience(&request, &state) {
        Ok(Audience::Insider) => {}
        Ok(Audience::Stranger) => return not_found().await,
        Err(refused) => return *refused,
    }
    let report = state.health.report(state.version);
    let (accepted, refused) = state.metrics.callback_totals();
    let (overall, overall_class) = label(report.status);
    let mut html = String::with_capacity(8 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>wechat-api — {overall}</title><style>
body{{font:15px/1.45 system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}}
main{{max-width:860px;margin:0 auto;padding:16px}} h1{{font-size:20px;margin:4px 0 12px}} h2{{font-size:16px;margin:20px 0 8px}}
.badge{{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;text-transform:uppercase}}
.ok{{background:#d9f2e3;color:#17643a}} .warn{{background:#fff1cc;color:#8a5a00}} .fail{{background:#fde0de;color:#a1261b}}
.facts{{display:flex;flex-wrap:wrap;gap:8px}} .fact{{background:#fff;border-radius:8px;padding:8px 12px;box-shadow:0 1px 2px #0001}}
.fact b{{display:block;font-size:18px}} table{{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px #0001}}
td,th{{text-align:left;padding:8px 10px;border-top:1px solid #eef0f3;vertical-align:top}} th{{font-size:12px;color:#667;border-top:0}}
td.out{{color:#445;font-size:13px;word-break:break-word}} small{{color:#889}}
</style></head><body><main>
<h1>wechat-api <span class="badge {overall_class}">{overall}</span></h1>
<div class="facts"><div class="fact"><small>replica</small><b>{replica}</b></div><div class="fact"><small>version</small><b>{version}</b></div><div class="fact"><small>uptime</small><b>{uptime}</b></div>
<div class="fact"><small>callbacks accepted</small><b>{accepted}</b></div><div class="fact"><small>callbacks refused</small><b>{refused}</b></div></div>
<h2>Checks</h2><table><tr><th>check</th><th>state</th><th>value</th><th>details</th></tr>"#,
        version = escape(state.version),
        replica = escape(state.health.replica()),
        uptime = uptime(state.health.uptime_secs()),
    );
    for (name, result, since) in state.health.entries() {
        let (text, class) = label(result.status);
        let value = match (&result.observed_value, &result.observed_unit) {
            (Some(v), Some(u)) => format!("{v} {u}"),
            (Some(v), None) => v.to_string(),
            _ => String::new(),
        };
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td><span class="badge {class}">{text}</span></td><td>{}</td><td class="out">{}<br><small>since {}</small></td></tr>"#,
            escape(&name),
            escape(&value),
            escape(result.output.as_deref().unwrap_or("")),
            escape(&since),
        );
    }
    html.push_str("</table><h2>Channels</h2>");
    channel_rows(&mut html, &state);
    html.push_str("<h2>Recent alerts</h2>");
    let recent = state.alerter.recent();
    if recent.is_empty() {
        html.push_str("<p><small>none since start</small></p>");
    } else {
        html.push_str("<table><tr><th>time</th><th>alert</th><th>delivery</th></tr>");
        for alert in recent.iter().rev() {
            let _ = write!(
                html,
                "<tr><td><small>{}</small></td><td>{}</td><td>{}</td></tr>",
                escape(&alert.at),
                escape(&alert.subject),
                escape(alert.outcome)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Recent sends</h2>");
    match crate::store::bounded(state.store.recent_sends(RECENT_SENDS)).await {
        Ok(sends) if sends.is_empty() => html.push_str("<p><small>none yet</small></p>"),
        Ok(sends) => {
            html.push_str("<table><tr><th>message</th><th>to</th><th>parts</th><th>outcome</th></tr>");
            for send in sends {
                let class = match send.status {
                    SendStatus::Sent => "ok",
                    SendStatus::Queued => "warn",
                    SendStatus::Failed | SendStatus::Refused => "fail",
                };
                let _ = write!(
                    html,
                    r#"<tr><td>{}<br><small>{}</small></td><td>{} {}</td><td>{}/{}</td><td><span class="badge {class}">{}</span> <span class="out">{}</span></td></tr>"#,
                    escape(&send.id),
                    escape(&crate::clock::rfc3339(send.updated_at)),
                    escape(send.channel.as_str()),
                    escape(&send.recipient),
                    send.parts_sent,
                    send.parts,
                    send.status.as_str(),
                    escape(send.reason.as_deref().unwrap_or("")),
                );
            }
            html.push_str("</table>");
        }
        Err(error) => {
            let _ = write!(html, "<p><small>unavailable: {}</small></p>", escape(&error.to_string()));
        }
    }
    html.push_str(r#"<p><small>JSON: <a href="/api/health">/api/health</a> · metrics: <a href="/metrics">/metrics</a></small></p></main></body></html>"#);
    HttpResponse::Ok().content_type("text/html; charset=utf-8").insert_header(("Cache-Control", "no-store")).body(html)
}

/// A row per channel (SPEC §12): kind, corp, its own path, last callback, token
/// age, and the egress IP WeCom sees (SPEC §14).
fn channel_rows(html: &mut String, state: &AppState) {
    let now = crate::store::now();
    html.push_str(
        "<table><tr><th>channel</th><th>kind</th><th>last callback</th><th>token</th><th>egress IP</th></tr>",
    );
    for channel in state.credentials.channels().iter() {
        let last = state.last_callback.get(channel.name.as_str()).map_or(0, |at| at.load(Ordering::Relaxed));
        let last = if last > 0 { rfc3339(last) } else { "none since start".to_owned() };
        let token = match state.wecom.tokens(&channel.name) {
            Ok(source) => match source.status().last_refresh_at {
                Some(at) => format!("refreshed {} ago", uptime((now - at).max(0) as u64)),
                None => "not fetched yet".to_owned(),
            },
            Err(_) => "no Secret".to_owned(),
        };
        let seen = state.egress.seen(&channel.name);
        let egress = match (seen.ip, seen.refused_since, seen.changed_from) {
            (None, _, _) => "not named yet".to_owned(),
            (Some(ip), Some(_), _) => format!("{ip} — refused (60020): add it to 企业可信IP"),
            (Some(ip), None, Some((before, _))) => format!("{ip} — changed from {before}"),
            (Some(ip), None, None) => format!("{ip} (last named {})", rfc3339(seen.last_seen)),
        };
        let _ = write!(
            html,
            "<tr><td>{}<br><small>{}</small></td><td>{}<br><small>{}</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(channel.name.as_str()),
            escape(&channel.path()),
            channel.kind().as_str(),
            escape(channel.corp_id.as_str()),
            escape(&last),
            escape(&token),
            escape(&egress),
        );
    }
    html.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_formats_uptime() {
        assert_eq!(escape("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
        assert_eq!(uptime(59), "59 s");
        assert_eq!(uptime(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(uptime(3 * 86_400), "3 d 0 h");
    }
}
