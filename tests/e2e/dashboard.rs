//! Issue 15: the dashboard in a real browser (Debian's Chromium over
//! chromedriver): signing in, the deployments table and its filters, the log
//! viewer on a large log, live follow while the real agent builds, deploy,
//! redeploy, the deployment switcher, deployment rules, and a viewer refused.
//! Over plain HTTP: live follow resuming from `Last-Event-ID`, CSRF, sign-in
//! limits, sessions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_protocol::{
    ComponentStatus, Deployment, DeploymentStatus, DeploymentStatus::*, Environment, Job,
    JobStatusUpdate, Project,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

const SERVER: &str = env!("CARGO_BIN_EXE_kiln-server-e2e");
const PASSWORD: &str = "correct horse battery";

/// A control plane with a project on `REPO`, Production on `main` and Staging
/// on `develop`, a fake agent, and three accounts: ada (admin), dee (deployer)
/// and vic (viewer).
struct Site {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    admin: Api,
    agent: Api,
    project: Project,
    production: Environment,
    staging: Environment,
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("server");
    let cp = ControlPlane::start(&data_dir).await;
    add_accounts(&data_dir);
    let admin = cp.admin();
    let project = admin.create_project("shop").await;
    let production = admin
        .create_environment(&project, "Production", "main")
        .await;
    let staging = admin
        .create_environment(&project, "Staging", "develop")
        .await;
    let agent = cp.register_agent("builder-1", &["linux"]).await;
    Site {
        _dir: dir,
        cp,
        admin,
        agent,
        project,
        production,
        staging,
    }
}

fn add_accounts(data_dir: &Path) {
    for (name, role) in [("ada", "admin"), ("dee", "deployer"), ("vic", "viewer")] {
        add_user(Path::new(SERVER), data_dir, name, role, PASSWORD);
    }
}

/// A commit id that differs from the others in its first characters, as real ones do.
fn commit(n: u32) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(n.to_be_bytes()))[..40].to_owned()
}

fn finished(status: DeploymentStatus) -> JobStatusUpdate {
    let mut report = update(status);
    let component = match status {
        BuildFailed => ComponentStatus::Failed,
        BuildCanceled => ComponentStatus::Canceled,
        _ => ComponentStatus::Succeeded,
    };
    report.backend = Some(component);
    report.storefront = Some(ComponentStatus::Skipped);
    if status == BuildFailed {
        report.reason = Some("backend: `npm run build` (build) exited with code 1".into());
    }
    report
}

impl Site {
    /// Pushes `sha` to `branch` and has the fake agent build it to `status`.
    async fn build(&self, branch: &str, sha: &str, status: DeploymentStatus) -> Deployment {
        let outcome = self.admin.push(branch, sha).await;
        let deployment = outcome
            .deployments
            .into_iter()
            .next()
            .expect("a deployment");
        let job = self.agent.claim(5).await.expect("a job");
        self.agent
            .report(&job, &update(Building))
            .await
            .expect_json::<Deployment>(StatusCode::OK)
            .await;
        self.agent
            .report(&job, &finished(status))
            .await
            .expect_json::<Deployment>(StatusCode::OK)
            .await;
        assert_eq!(job.deployment_id, deployment.id);
        deployment
    }

    /// Pushes and claims, leaving the job building.
    async fn start_build(&self, branch: &str, sha: &str) -> (Deployment, Job) {
        let outcome = self.admin.push(branch, sha).await;
        let deployment = outcome
            .deployments
            .into_iter()
            .next()
            .expect("a deployment");
        let job = self.agent.claim(5).await.expect("a job");
        let mut building = update(Building);
        building.backend = Some(ComponentStatus::Building);
        self.agent
            .report(&job, &building)
            .await
            .expect_json::<Deployment>(StatusCode::OK)
            .await;
        (deployment, job)
    }

    /// Appends `bytes` to a job's log stream in pieces the server accepts.
    async fn append(&self, job: &Job, stream: &str, offset: &mut u64, bytes: &[u8]) {
        for piece in bytes.chunks(1 << 20) {
            let reply = self
                .agent
                .append_log(&job.job_id, stream, *offset, piece.to_vec())
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            *offset += piece.len() as u64;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cp.base_url())
    }
}

/// A browser signed in as `user`, starting from `path`.
async fn signed_in(site_url: &str, user: &str) -> Browser {
    let browser = Browser::start().await;
    browser.goto(&format!("{site_url}/login")).await;
    browser.sign_in(user, PASSWORD).await;
    browser
}

#[tokio::test]
async fn issue_15_sign_in_then_read_and_filter_the_deployments_table() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let mut shas = Vec::new();
    for n in 0..55 {
        let status = [
            AwaitingDeployment,
            BuildFailed,
            AwaitingDeployment,
            BuildCanceled,
        ][n % 4];
        let deployment = site.build("main", &commit(1000 + n as u32), status).await;
        shas.push(deployment.commit_sha);
    }
    for n in 0..8 {
        let status = if n % 2 == 0 {
            BuildFailed
        } else {
            AwaitingDeployment
        };
        site.build("develop", &commit(2000 + n), status).await;
    }

    // Signed out, a page sends the browser to sign in, and back afterwards.
    let browser = Browser::start().await;
    let wanted = format!("/projects/{}/deployments", site.project.id);
    browser.goto(&site.url(&wanted)).await;
    assert!(
        browser.path().await.starts_with("/login?next="),
        "{}",
        browser.path().await
    );
    browser.screenshot("sign-in").await;
    browser.fill("#username", "ada").await;
    browser.fill("#password", "wrong password").await;
    browser
        .click_to_load("form.signin button[type=submit]")
        .await;
    assert!(browser.text(".problem").await.contains("do not match"));
    browser.sign_in("ada", PASSWORD).await;
    assert_eq!(browser.path().await, wanted);

    // Newest first, 50 a page, with everything the guide lists.
    let rows = browser.find_all("table.deployments tbody tr").await;
    assert_eq!(rows.len(), 50);
    assert!(browser.text(".count").await.contains("1–50 of 63"));
    let first = rows[0].text().await.unwrap();
    for expected in [
        &commit(2007)[..7],
        "develop",
        "Staging",
        "Ada Lovelace",
        "Backend",
        "Storefront",
    ] {
        assert!(
            first.contains(expected),
            "{expected} missing from the newest row: {first}"
        );
    }
    browser.screenshot("deployments").await;
    browser.click_to_load("nav.pages a[rel=next]").await;
    browser
        .until(
            "the second page",
            Duration::from_secs(5),
            "return location.search.includes('page=1')",
        )
        .await;
    assert_eq!(
        browser.find_all("table.deployments tbody tr").await.len(),
        13
    );

    // Filters go into the URL and narrow the table.
    browser.goto(&site.url(&wanted)).await;
    browser
        .find("select[name=environment]")
        .await
        .select_by_value(&site.staging.id)
        .await
        .unwrap();
    browser
        .find("select[name=status]")
        .await
        .select_by_value("build_failed")
        .await
        .unwrap();
    browser
        .click_to_load("form.filters button[type=submit]")
        .await;
    browser
        .until(
            "the filtered table",
            Duration::from_secs(5),
            "return location.search.includes('status=build_failed')",
        )
        .await;
    let path = browser.path().await;
    assert!(
        path.contains(&format!("environment={}", site.staging.id)),
        "{path}"
    );
    let statuses = browser
        .run(
            "return [...document.querySelectorAll('table.deployments tbody tr')].map(r => [r.querySelector('.badge').dataset.status, r.cells[4].textContent.trim()])",
            vec![],
        )
        .await;
    assert_eq!(statuses, json!(vec![json!(["build_failed", "Staging"]); 4]));

    // Search by commit sha.
    let wanted_sha = &shas[7];
    browser
        .goto(&site.url(&format!("{wanted}?q={}", &wanted_sha[..8])))
        .await;
    let rows = browser.find_all("table.deployments tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains(&wanted_sha[..7]));

    // Issue 32: a status the link names that is none is said, not ignored.
    browser
        .goto(&site.url(&format!("{wanted}?status=bogus")))
        .await;
    let problem = browser.text("p.problem").await;
    assert!(
        problem.contains("“bogus” is not a deployment status, so no status filter is applied"),
        "{problem}"
    );
    assert!(browser.text(".count").await.contains("1–50 of 63"));

    // The project's environment cards.
    browser
        .goto(&site.url(&format!("/projects/{}", site.project.id)))
        .await;
    let cards = browser.text("ul.cards").await;
    for expected in ["Production", "Staging", "main", "develop", "Long-lived"] {
        assert!(cards.contains(expected), "{expected} missing: {cards}");
    }
    browser.screenshot("project").await;

    // The fleet page, with why an agent claims nothing.
    let reason = "only 1 GiB free under work_dir /var/lib/kiln-agent/work (min_free_disk is 2 GiB)";
    let held = site
        .agent
        .post_json(
            "/api/v1/agent/jobs/claim",
            &kiln_protocol::ClaimRequest {
                wait_seconds: Some(0),
                facts: None,
                holding_back: Some(reason.to_owned()),
                roles: Vec::new(),
            },
        )
        .await;
    assert_eq!(held.status, StatusCode::NO_CONTENT);
    browser.goto(&site.url("/agents")).await;
    let fleet = browser.text("table.agents").await;
    assert!(
        fleet.contains("builder-1")
            && fleet.contains("linux")
            && fleet.contains(&format!("Claims no jobs: {reason}")),
        "{fleet}"
    );
    browser.screenshot("agents").await;

    // A deployment no agent has taken says why.
    let queued = site
        .admin
        .push("main", &commit(3000))
        .await
        .deployments
        .remove(0);
    browser
        .goto(&site.url(&format!("/deployments/{}", queued.id)))
        .await;
    let waiting = browser.text("#summary .waiting").await;
    assert_eq!(
        waiting,
        format!("Not started: no agent that may build it is available: builder-1 claims no jobs: {reason}")
    );
    // While it waits, the reason follows the fleet without a reload.
    let fleet: kiln_protocol::AgentList = site
        .admin
        .get("/api/v1/agents")
        .await
        .expect_json(StatusCode::OK)
        .await;
    let builder = fleet
        .agents
        .iter()
        .find(|agent| agent.name == "builder-1")
        .unwrap();
    site.admin.set_paused(&builder.id, true).await;
    browser
        .until(
            "the waiting reason to follow the pause",
            Duration::from_secs(20),
            "return document.querySelector('#summary .waiting')?.textContent.endsWith('builder-1 paused')",
        )
        .await;
    site.admin.set_paused(&builder.id, false).await;

    // Unknown ids are a 404 page.
    browser.goto(&site.url("/deployments/dpl_nope")).await;
    assert!(browser
        .text("main")
        .await
        .contains("deployment dpl_nope does not exist"));
    browser.goto(&site.url("/nowhere")).await;
    assert!(browser.text("h1").await.contains("Not found"));
    browser.close().await;
}

#[tokio::test]
async fn issue_15_a_viewer_is_refused_a_deploy_and_a_deployer_is_not() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let deployment = site.build("main", &sha(1), AwaitingDeployment).await;
    let page = site.url(&format!("/deployments/{}", deployment.id));

    let browser = signed_in(&site.cp.base_url(), "vic").await;
    browser.goto(&page).await;
    // Issue 32: a viewer is shown no button it cannot use, but why.
    assert!(browser.find_all("button.deploy").await.is_empty());
    let hint = browser.text(".role-needed").await;
    assert!(
        hint.contains("Deploy needs the deployer role; you are a viewer."),
        "{hint}"
    );
    // The server refuses the form a viewer posts all the same.
    let refusal = browser
        .run(
            &format!(
                "const body = new URLSearchParams({{csrf: document.querySelector('input[name=csrf]').value}}); \
                 return fetch('/deployments/{}/deploy', {{method: 'POST', body}}).then((answer) => answer.text())",
                deployment.id
            ),
            vec![],
        )
        .await;
    let refusal = refusal.as_str().unwrap_or_default().to_owned();
    assert!(
        refusal.contains("you need the deployer role") && refusal.contains("viewer"),
        "{refusal}"
    );
    browser.screenshot("refused").await;
    assert_eq!(
        site.admin.deployment(&deployment.id).await.status,
        AwaitingDeployment
    );

    // Signing out ends the session: the next page asks to sign in.
    browser.goto(&page).await;
    browser
        .click_to_load("header form button[type=submit]")
        .await;
    browser.goto(&page).await;
    assert!(browser.path().await.starts_with("/login"));
    browser.sign_in("dee", PASSWORD).await;
    assert_eq!(
        browser.path().await,
        format!("/deployments/{}", deployment.id)
    );
    browser.click_to_load("button.deploy").await;
    site.admin.wait_for_status(&deployment.id, Live).await;
    browser.close().await;
}

#[tokio::test]
async fn issue_32_a_build_older_than_live_is_superseded_and_deploying_it_asks_first() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let older = site.build("main", &sha(1), AwaitingDeployment).await;
    let newer = site.build("main", &sha(2), AwaitingDeployment).await;
    site.admin.deploy(&newer.id).await;
    site.admin.wait_for_status(&newer.id, Live).await;

    let browser = signed_in(&site.cp.base_url(), "dee").await;
    browser
        .goto(&site.url(&format!("/deployments/{}", older.id)))
        .await;
    let superseded = browser.text("p.superseded").await;
    assert!(
        superseded.contains("Superseded: deployment")
            && superseded.contains(&sha(2)[..7])
            && superseded.contains("back to an older commit"),
        "{superseded}"
    );
    // A form posted without the tick is refused, and nothing moves.
    let refusal = browser
        .run(
            &format!(
                "const body = new URLSearchParams({{csrf: document.querySelector('input[name=csrf]').value}}); \
                 return fetch('/deployments/{}/deploy', {{method: 'POST', body}}).then((answer) => answer.text())",
                older.id
            ),
            vec![],
        )
        .await;
    let refusal = refusal.as_str().unwrap_or_default().to_owned();
    assert!(
        refusal.contains("is live and newer than this one"),
        "{refusal}"
    );
    assert_eq!(site.admin.deployment(&newer.id).await.status, Live);
    // Ticked, it deploys.
    browser
        .find("input[name=older]")
        .await
        .click()
        .await
        .unwrap();
    browser.click_to_load("button.deploy").await;
    site.admin.wait_for_status(&older.id, Live).await;
    browser.close().await;
}

#[tokio::test]
async fn issue_32_the_build_time_counts_on_while_it_builds() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let (building, _job) = site.start_build("main", &sha(3)).await;
    let browser = signed_in(&site.cp.base_url(), "vic").await;
    browser
        .goto(&site.url(&format!("/deployments/{}", building.id)))
        .await;
    let first = browser.text("dd.build-time").await;
    let later = browser
        .until(
            "the build time counting on",
            Duration::from_secs(5),
            &format!(
                "const shown = document.querySelector('dd.build-time').textContent.trim(); return shown !== {first:?} && shown"
            ),
        )
        .await;
    assert!(later.as_str().unwrap().ends_with('s'), "{later}");
    browser.close().await;
}

/// A backend log of `lines` lines: coloured, with GitLab sections, the needle
/// `kiln-needle-42` on lines 1235 and `lines - 10` (1-based), and a failure last.
fn big_log(lines: usize) -> Vec<u8> {
    let mut log = String::with_capacity(lines * 80);
    log.push_str("\x1b[0Ksection_start:1764426307:install\r\x1b[0KInstalling dependencies\n");
    for n in 1..lines - 1 {
        let number = n + 1;
        if number == 600 {
            log.push_str("\x1b[0Ksection_end:1764426309:install\r\x1b[0K\n");
        } else if number == 601 {
            log.push_str("\x1b[0Ksection_start:1764426309:build\r\x1b[0KBuilding the backend\n");
        } else if number == 1235 || number == lines - 10 {
            log.push_str(&format!("line {number}: kiln-needle-42 is here\n"));
        } else if number % 97 == 0 {
            log.push_str(&format!(
                "\x1b[31merror\x1b[0m line {number}: \x1b[1;33mwarning text\x1b[0m\n"
            ));
        } else {
            log.push_str(&format!("line {number}: compiled module {n:08} in 12ms\n"));
        }
    }
    log.push_str("\x1b[31mError: Build failed on purpose\x1b[0m\n");
    log.into_bytes()
}

#[tokio::test]
async fn issue_15_the_log_viewer_opens_a_large_log_at_its_tail_and_searches_and_anchors() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let (deployment, job) = site.start_build("main", &sha(1)).await;
    let lines = 120_000;
    let (mut system_offset, mut backend_offset) = (0, 0);
    let system = "[2026-11-29T14:25:07.412Z] Running `npm ci` (install).\n\
                  [2026-11-29T14:25:09.412Z] `npm ci` (install) finished in 2.0s.\n\
                  [2026-11-29T14:25:09.500Z] Running `npm run build` (build).\n\
                  [2026-11-29T14:25:21.500Z] Build failed after 14s: backend: `npm run build` (build) exited with code 1\n";
    site.append(&job, "system", &mut system_offset, system.as_bytes())
        .await;
    site.append(&job, "backend", &mut backend_offset, &big_log(lines))
        .await;
    site.agent
        .report(&job, &finished(BuildFailed))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;

    let browser = signed_in(&site.cp.base_url(), "vic").await;
    let page = site.url(&format!("/deployments/{}", deployment.id));
    browser.goto(&page).await;
    // The failed component's log opens, at its tail, a window of rows rendered.
    let total = browser
        .until(
            "the backend log to open",
            Duration::from_secs(10),
            "const s = document.querySelector('#log-backend'); return !s.hidden && s.dataset.ended === 'true' && Number(s.dataset.total)",
        )
        .await;
    assert_eq!(total, json!(lines));
    let rendered: usize = browser
        .run(
            "return Number(document.querySelector('#log-backend').dataset.rendered)",
            vec![],
        )
        .await
        .as_u64()
        .unwrap() as usize;
    assert!(
        rendered > 10 && rendered < 300,
        "{rendered} rows rendered of {lines}"
    );
    let last = browser
        .until(
            "the last line on screen",
            Duration::from_secs(5),
            &format!("const v = document.querySelector('#log-backend .viewport').getBoundingClientRect(); const r = document.querySelector('#log-backend .row[data-line=\"{lines}\"]'); return r && r.getBoundingClientRect().bottom <= v.bottom + 1 && r.textContent"),
        )
        .await;
    assert!(
        last.as_str()
            .unwrap()
            .contains("Error: Build failed on purpose"),
        "{last}"
    );
    // Colours are rendered, not printed as escapes.
    let red = browser
        .run(&format!("return document.querySelector('#log-backend .row[data-line=\"{lines}\"] .fg-red')?.textContent"), vec![])
        .await;
    assert_eq!(red, json!("Error: Build failed on purpose"));
    assert!(!browser
        .text("#log-backend .viewport")
        .await
        .contains("[31m"));
    // GitLab's sections are in the outline.
    let outline = browser.text("#log-backend nav.outline").await;
    assert!(
        outline.contains("Installing dependencies") && outline.contains("Building the backend"),
        "{outline}"
    );
    browser
        .run(
            "document.getElementById('activity').scrollIntoView()",
            vec![],
        )
        .await;
    browser.screenshot("log-viewer").await;

    // Search covers the whole log, not what is on screen; next and previous go round.
    browser.fill("#backend-search", "KILN-needle-42").await;
    browser
        .find("#backend-search")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    let match_at = |line: usize| {
        format!(
            "const s = document.querySelector('#log-backend'); const row = s.querySelector('.row.current'); return s.dataset.match === '{line}' && row && row.dataset.line === '{line}' && row.querySelector('mark')?.textContent"
        )
    };
    let found = browser
        .until("the first match", Duration::from_secs(10), &match_at(1235))
        .await;
    assert_eq!(found, json!("kiln-needle-42"));
    assert!(browser
        .text("#log-backend .search-status")
        .await
        .starts_with("1 of 2"));
    browser
        .click("#log-backend form.search button[value=next]")
        .await;
    browser
        .until(
            "the second match",
            Duration::from_secs(10),
            &match_at(lines - 10),
        )
        .await;
    browser
        .click("#log-backend form.search button[value=next]")
        .await;
    browser
        .until(
            "the first match again",
            Duration::from_secs(10),
            &match_at(1235),
        )
        .await;
    browser
        .click("#log-backend form.search button[value=prev]")
        .await;
    browser
        .until(
            "the last match, going back",
            Duration::from_secs(10),
            &match_at(lines - 10),
        )
        .await;

    // A range anchor opens with its lines selected and on screen, the page
    // scrolled to them too.
    browser
        .run("window.scrollTo(0, 0); return null", vec![])
        .await;
    browser.goto(&format!("{page}#backend-L120-140")).await;
    let selected = browser
        .until(
            "lines 120 to 140 selected",
            Duration::from_secs(10),
            "const rows = [...document.querySelectorAll('#log-backend .row.selected')]; return rows.length === 21 && rows[0].dataset.line === '120' && rows.map(r => r.dataset.line).join(',')",
        )
        .await;
    assert!(selected.as_str().unwrap().ends_with(",140"));
    browser
        .until(
            "line 120 in the window",
            Duration::from_secs(5),
            "const r = document.querySelector('#log-backend .row[data-line=\"120\"]').getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight",
        )
        .await;
    // Clicking a line number makes an anchor of it; shift-click a range.
    browser
        .click("#log-backend .row[data-line='125'] a.n")
        .await;
    browser
        .until(
            "the line's anchor",
            Duration::from_secs(5),
            "return location.hash === '#backend-L125'",
        )
        .await;

    // Times and wrapping toggle.
    browser.click("#backend-times").await;
    browser
        .until(
            "per-line times",
            Duration::from_secs(5),
            "return document.querySelectorAll('#log-backend .row .t').length > 0",
        )
        .await;
    browser.click("#backend-wrap").await;
    browser
        .until(
            "wrapping",
            Duration::from_secs(5),
            "return document.querySelector('#log-backend .viewport').classList.contains('wrap')",
        )
        .await;

    // Folding a section hides its lines behind one row.
    browser.click("#log-backend nav.outline button.fold").await;
    let folded = browser
        .until(
            "a folded section",
            Duration::from_secs(5),
            "return document.querySelector('#log-backend .row.folded')?.textContent",
        )
        .await;
    assert!(
        folded.as_str().unwrap().contains("Installing dependencies"),
        "{folded}"
    );

    // The system log's steps have durations, and the failing one is marked.
    browser.click("nav.streams a[data-stream=system]").await;
    let steps = browser
        .until(
            "the system log's steps",
            Duration::from_secs(10),
            "return document.querySelector('#log-system nav.outline li.failed')?.textContent",
        )
        .await;
    assert!(
        steps.as_str().unwrap().contains("build: npm run build"),
        "{steps}"
    );
    let install = browser.text("#log-system nav.outline li").await;
    assert!(
        install.contains("install: npm ci") && install.contains("2s"),
        "{install}"
    );

    // The raw log is there to download, and as plain text without its escapes.
    browser
        .find(&format!(
            "a.raw[href='/deployments/{}/logs/system/raw']",
            deployment.id
        ))
        .await;
    browser.click("nav.streams a[data-stream=backend]").await;
    let plain = browser
        .run(
            "const href = document.querySelector('#log-backend a.plain').href; return fetch(href).then(r => r.text()).then(t => [t.includes('\\x1b'), t.endsWith('Error: Build failed on purpose\\n'), t.split('\\n').length])",
            vec![],
        )
        .await;
    assert_eq!(plain, json!([false, true, lines + 1]));
    browser.close().await;
}

#[tokio::test]
async fn issue_32_a_reused_build_says_whose_output_it_is_instead_of_an_empty_log() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let (first, first_job) = site.start_build("main", &commit(1)).await;
    site.agent
        .report(&first_job, &finished(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;
    let (second, job) = site.start_build("main", &commit(2)).await;
    let system = format!(
        "[2026-12-07T10:00:00.000Z] {}\n",
        kiln_protocol::reused_output_line(
            "backend",
            &first_job.job_id,
            "branch:main's cache, key 0a1b2c3d4e5f",
            4096
        )
    );
    site.append(&job, "system", &mut 0, system.as_bytes()).await;
    site.agent
        .report(&job, &finished(AwaitingDeployment))
        .await
        .expect_json::<Deployment>(StatusCode::OK)
        .await;

    let browser = signed_in(&site.cp.base_url(), "vic").await;
    browser
        .goto(&site.url(&format!("/deployments/{}#backend", second.id)))
        .await;
    let link = browser
        .until(
            "the reused output's deployment",
            Duration::from_secs(10),
            "const a = document.querySelector('#log-backend p.reused a'); return a && document.querySelector('#log-backend .viewport').hidden && a.getAttribute('href')",
        )
        .await;
    assert_eq!(link, json!(format!("/deployments/{}", first.id)));
    browser.close().await;
}

#[tokio::test]
async fn issue_32_a_log_drain_is_set_in_the_browser_and_gets_the_build_log() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let collector = OtlpReceiver::start().await;
    let browser = signed_in(&site.cp.base_url(), "ada").await;
    browser
        .goto(&site.url(&format!("/environments/{}/settings", site.production.id)))
        .await;
    browser.fill("#otlp_endpoint", &collector.endpoint()).await;
    browser.fill("#header_name", "Authorization").await;
    browser.fill("#header_value", "Bearer otel-key").await;
    browser
        .click_to_load("form.drain button[type=submit]")
        .await;
    assert!(browser.text("p.notice").await.contains("Log drain saved"));
    let now = browser.text("p.drain-now").await;
    assert!(
        now.contains(&collector.endpoint())
            && now.contains("Authorization")
            && !now.contains("otel-key"),
        "{now}"
    );

    let (deployment, job) = site.start_build("main", &commit(1)).await;
    site.append(&job, "backend", &mut 0, b"warn:    Redis not configured\n")
        .await;
    let records = collector
        .until("the build's line", |records| !records.is_empty())
        .await;
    assert_eq!(records[0].service, "medusa-server");
    assert_eq!(records[0].version, deployment.commit_sha);
    assert_eq!(records[0].severity.as_deref(), Some("WARN"));
    assert_eq!(records[0].authorization.as_deref(), Some("Bearer otel-key"));
    browser.close().await;
}

/// The screenshot set in docs/screenshots (`KILN_SCREENSHOT_DIR=docs/screenshots`):
/// every page at 1400 and at 400 px wide, none wider than a 400 px screen.
#[tokio::test]
async fn issue_32_every_page_fits_a_phone_and_is_photographed_at_both_widths() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let production = &site.production;
    site.admin
        .set_variables(
            &production.id,
            json!([
                {"name": "STRIPE_API_KEY", "value": "sk_live_0123456789", "secret": true},
                {"name": "MEDUSA_BACKEND_URL", "value": "https://api.shop.example.com", "secret": false},
            ]),
        )
        .await;
    let receiver = HookReceiver::start(1).await;
    site.admin
        .post_json(
            &format!("/api/v1/projects/{}/webhooks", site.project.id),
            &json!({"url": receiver.url(), "events": ["build.succeeded", "build.failed"]}),
        )
        .await
        .expect_json::<kiln_protocol::Webhook>(StatusCode::CREATED)
        .await;
    for (n, status) in [
        (1, AwaitingDeployment),
        (2, BuildFailed),
        (3, AwaitingDeployment),
    ] {
        site.build("main", &commit(n), status).await;
    }
    let (deployment, job) = site.start_build("main", &commit(4)).await;
    let system = format!(
        "[2026-12-07T10:00:00.000Z] {}\n",
        kiln_protocol::step_started_line("npm ci", "install")
    );
    site.append(&job, "system", &mut 0, system.as_bytes()).await;
    site.append(&job, "backend", &mut 0, &big_log(200)).await;

    receiver
        .until("three deliveries", |received| received.len() >= 3)
        .await;
    let browser = signed_in(&site.cp.base_url(), "ada").await;
    let (project, env) = (&site.project.id, &production.id);
    let pages = [
        ("projects", "/".to_owned()),
        ("new-project", "/projects/new".to_owned()),
        ("project", format!("/projects/{project}")),
        ("connect-git", format!("/projects/{project}/connect")),
        ("deployments", format!("/projects/{project}/deployments")),
        (
            "new-environment",
            format!("/environments/new?project={project}"),
        ),
        ("environment", format!("/environments/{env}")),
        (
            "environment-settings",
            format!("/environments/{env}/settings"),
        ),
        ("variables", format!("/environments/{env}/variables")),
        (
            "deployment",
            format!("/deployments/{}#backend", deployment.id),
        ),
        ("agents", "/agents".to_owned()),
        ("webhooks", format!("/projects/{project}/webhooks")),
    ];
    let mut too_wide = Vec::new();
    for (width, height) in [(1400, 1000), (400, 900)] {
        browser.resize(width, height).await;
        for (name, path) in &pages {
            browser.goto(&site.url(path)).await;
            browser
                .until(
                    "the page drawn",
                    Duration::from_secs(10),
                    "return document.readyState === 'complete' && !document.querySelector('.log-state')?.textContent.startsWith('Loading')",
                )
                .await;
            browser.screenshot(&format!("{name}-{width}")).await;
            let overflow = browser
                .run(
                    "return document.documentElement.scrollWidth - window.innerWidth",
                    vec![],
                )
                .await;
            if width == 400 && overflow.as_i64().unwrap() > 0 {
                too_wide.push(format!("{path}: {overflow} px too wide"));
            }
        }
    }
    assert!(too_wide.is_empty(), "at 400 px: {too_wide:#?}");
    browser.close().await;
}

#[tokio::test]
async fn issue_32_a_webhook_is_added_in_the_browser_and_its_failed_delivery_retried_by_hand() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    // The receiver refuses the first delivery: the automatic retry (10 s
    // later) is not waited for, the hand's is.
    let receiver = HookReceiver::start(1).await;
    let browser = signed_in(&site.cp.base_url(), "ada").await;
    browser
        .goto(&site.url(&format!("/projects/{}", site.project.id)))
        .await;
    browser.click_to_load("nav.tabs a[href$='/webhooks']").await;
    browser.fill("#webhook-url", &receiver.url()).await;
    // Only build.created.
    for event in [
        "build.succeeded",
        "build.failed",
        "build.canceled",
        "deployment.live",
        "deployment.failed",
    ] {
        browser
            .click(&format!("form.new-webhook input[value='{event}']"))
            .await;
    }
    browser
        .click_to_load("form.new-webhook button[type=submit]")
        .await;
    let secret = browser.text("code.webhook-secret").await;
    assert_eq!(secret.len(), 64, "{secret}");

    site.admin.push("main", &commit(1)).await;
    let first = receiver
        .until("the first delivery", |received| !received.is_empty())
        .await;
    assert_eq!(first[0].answered, 500);
    assert_eq!(first[0].event.as_deref(), Some("build.created"));
    assert!(signature_holds(
        &secret,
        first[0].signature.as_deref().unwrap(),
        &first[0].body
    ));
    // The delivery log shows the refused attempt; Retry sends it again.
    browser
        .goto(&site.url(&format!("/projects/{}/webhooks", site.project.id)))
        .await;
    let attempts = browser.text("table.deliveries ol.attempts").await;
    assert!(attempts.contains("500"), "{attempts}");
    browser.click_to_load("table.deliveries button.retry").await;
    assert!(browser
        .text("p.notice")
        .await
        .contains("goes out again now"));
    receiver
        .until("the retried delivery, accepted", |received| {
            received
                .iter()
                .any(|r| r.answered == 204 && r.delivery == first[0].delivery)
        })
        .await;
    browser
        .goto(&site.url(&format!("/projects/{}/webhooks", site.project.id)))
        .await;
    let state = browser.text("table.deliveries .badge").await;
    assert_eq!(state, "delivered");

    // A viewer sees the log, not the URL's path, and no buttons.
    let viewer = signed_in(&site.cp.base_url(), "vic").await;
    viewer
        .goto(&site.url(&format!("/projects/{}/webhooks", site.project.id)))
        .await;
    let page = viewer.body_text().await;
    assert!(
        !page.contains("/kiln-events") && page.contains("delivered"),
        "{page}"
    );
    assert!(viewer.find_all("button.retry").await.is_empty());
    viewer.close().await;
    browser.close().await;
}

/// Signs in over HTTP, returning the session cookie and the CSRF token of the
/// first form on `page`.
async fn http_session(site: &Site, user: &str, page: &str) -> (reqwest::Client, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = sign_in_over_http(&client, &site.url(""), user, PASSWORD, Some(page)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], page);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let html = client
        .get(site.url(page))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_owned();
    (client, cookie, csrf)
}

#[tokio::test]
async fn issue_15_sessions_csrf_and_sign_in_limits_over_http() {
    let site = site().await;
    let deployment = site.build("main", &sha(1), AwaitingDeployment).await;
    let page = format!("/deployments/{}", deployment.id);
    let (client, cookie, csrf) = http_session(&site, "dee", &page).await;

    // A form without the session's CSRF token is a 403 page, and nothing happens.
    let forged = client
        .post(site.url(&format!("{page}/deploy")))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged
        .text()
        .await
        .unwrap()
        .contains("CSRF token does not match"));
    assert_eq!(
        site.admin.deployment(&deployment.id).await.status,
        AwaitingDeployment
    );
    // With it, the deploy runs and the browser goes back to the deployment.
    let deployed = client
        .post(site.url(&format!("{page}/deploy")))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), StatusCode::SEE_OTHER);
    site.admin.wait_for_status(&deployment.id, Live).await;

    // Cancel (which Medusa Cloud lacks) stops a queued build and says who did it.
    let queued = site.admin.push("main", &sha(2)).await.deployments.remove(0);
    let canceled = client
        .post(site.url(&format!("/deployments/{}/cancel", queued.id)))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), StatusCode::SEE_OTHER);
    let queued = site.admin.deployment(&queued.id).await;
    assert_eq!(queued.status, BuildCanceled);
    assert_eq!(queued.reason.as_deref(), Some("canceled by dee"));

    // Redeploy "without cache" from the dashboard builds afresh (issue 18).
    let again = client
        .post(site.url(&format!("/deployments/{}/redeploy", deployment.id)))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("cache", "off")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let fresh_id = again.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/deployments/")
        .to_owned();
    let fresh = site.admin.deployment(&fresh_id).await;
    assert_eq!(fresh.redeploy_of.as_deref(), Some(deployment.id.as_str()));
    assert!(!fresh.use_cache);

    // Reading needs no JavaScript: the pages carry their content.
    let read = |path: String| {
        let (client, cookie, url) = (client.clone(), cookie.clone(), site.url(&path));
        async move {
            let response = client
                .get(url)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.text().await.unwrap()
        }
    };
    let table = read(format!("/projects/{}/deployments", site.project.id)).await;
    for expected in [
        &sha(2)[..7],
        "Build canceled",
        "Live",
        "Ada Lovelace",
        "<th scope=\"col\">Commit</th>",
    ] {
        assert!(
            table.contains(expected),
            "{expected} missing from the deployments table"
        );
    }
    let details = read(format!("/deployments/{}", queued.id)).await;
    for expected in ["Timeline", "canceled by dee", "Raw log", "Redeploy"] {
        assert!(
            details.contains(expected),
            "{expected} missing from the deployment page"
        );
    }

    // An unknown or ended session goes to sign-in, keeping where it was going.
    let stale = client
        .get(site.url(&page))
        .header("cookie", "kiln_session=not-a-session")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::SEE_OTHER);
    assert_eq!(stale.headers()["location"], format!("/login?next={page}"));
    // The API keeps its bearer tokens: a session cookie does not open it.
    let api = client
        .get(site.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);

    // Five failed sign-ins for one user and the sixth is refused, even with the
    // right password; another user from elsewhere is unaffected.
    for _ in 0..5 {
        let failed = sign_in_over_http(&client, &site.url(""), "ada", "nope", None).await;
        assert_eq!(failed.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = sign_in_over_http(&client, &site.url(""), "ada", PASSWORD, None).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited
        .text()
        .await
        .unwrap()
        .contains("Too many sign-in attempts"));
}

/// Reads Server-Sent Events from `response` until `stop` says so; returns the
/// texts and the last event id.
async fn read_events(
    response: reqwest::Response,
    mut stop: impl FnMut(&str, &str) -> bool,
) -> (String, Option<String>, bool) {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut text = String::new();
    let mut last_id = None;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let (mut name, mut data, mut id) = ("message", String::new(), None);
            for line in event.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = if value.trim() == "end" {
                        "end"
                    } else {
                        "message"
                    };
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                }
            }
            if name == "end" {
                return (text, last_id, true);
            }
            if data.is_empty() {
                continue;
            }
            let event: serde_json::Value = serde_json::from_str(&data).unwrap();
            text.push_str(event["text"].as_str().unwrap());
            last_id = id.or(last_id);
            if stop(&text, name) {
                return (text, last_id, false);
            }
        }
    }
}

#[tokio::test]
async fn issue_15_live_follow_resumes_from_the_last_byte_after_a_reconnect() {
    let site = site().await;
    let (deployment, job) = site.start_build("main", &sha(1)).await;
    let page = format!("/deployments/{}", deployment.id);
    let (client, cookie, _) = http_session(&site, "vic", &page).await;
    let events = site.url(&format!("{page}/logs/backend/events?from=0"));
    let mut offset = 0;
    site.append(
        &job,
        "backend",
        &mut offset,
        "first line\nsecond café line\nthird, half".as_bytes(),
    )
    .await;

    let response = client
        .get(&events)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (before, last_id, ended) = read_events(response, |text, _| text.contains("café")).await;
    assert!(!ended);
    let last_id = last_id.expect("events carry ids");
    assert_eq!(
        last_id,
        before.len().to_string(),
        "the id is the byte offset held"
    );

    // While the client is away, more arrives, including a line finished in pieces.
    site.append(
        &job,
        "backend",
        &mut offset,
        " done\nfourth line\n".as_bytes(),
    )
    .await;
    site.append(&job, "backend", &mut offset, "ünïcödé fifth\n".as_bytes())
        .await;
    let reconnected = client
        .get(&events)
        .header("cookie", &cookie)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    let finish = {
        let agent = site.agent.clone();
        let job = job.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            agent.report(&job, &finished(AwaitingDeployment)).await;
        })
    };
    let (after, _, ended) = read_events(reconnected, |_, _| false).await;
    finish.await.unwrap();
    assert!(ended, "the stream ends once the job has");
    let raw = site
        .admin
        .get(&format!("/api/v1{page}/logs/backend"))
        .await
        .text();
    assert_eq!(
        format!("{before}{after}"),
        raw,
        "nothing lost or doubled across the reconnect"
    );

    // The raw log downloads from the dashboard too.
    let download = client
        .get(site.url(&format!("{page}/logs/backend/raw")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(download.text().await.unwrap(), raw);
}

#[tokio::test]
async fn issue_15_live_follow_deploy_redeploy_switch_and_rules_with_the_real_agent() {
    if !browser_available() {
        return;
    }
    let Some(world) = crate::agent::world(json!([
        {"name": "KILN_FIXTURE_LINES", "value": "100"},
        {"name": "KILN_FIXTURE_LINE_DELAY_MS", "value": "100"},
    ]))
    .await
    else {
        return;
    };
    let data_dir: PathBuf = world.root_dir().join("server");
    add_accounts(&data_dir);
    let agent = world.agent("agent", "").await;
    let site_url = world.cp.base_url();
    // Signed in before the push: the build must still be printing when the
    // page first looks.
    let browser = signed_in(&site_url, "ada").await;
    let first = world.push(&world.repo.head()).await;
    let page = format!("{site_url}/deployments/{}", first.id);
    browser.goto(&page).await;

    // Lines arrive while the real agent builds.
    let early = browser
        .until(
            "the first build lines",
            Duration::from_secs(60),
            "const s = document.querySelector('#log-backend'); return s.textContent.includes('fixture-line') && Number(s.dataset.total)",
        )
        .await;
    let later = browser
        .until(
            "more lines, live",
            Duration::from_secs(30),
            &format!("const s = document.querySelector('#log-backend'); return Number(s.dataset.total) > {early} && Number(s.dataset.total)"),
        )
        .await;
    assert!(later.as_u64() > early.as_u64());
    browser.screenshot("live-build").await;
    // The status beside the title follows the build to its end.
    browser
        .until(
            "awaiting deployment on the page",
            Duration::from_secs(90),
            "return document.querySelector('#deployment-status .badge')?.dataset.status === 'awaiting_deployment' && document.querySelector('#log-backend').dataset.ended === 'true'",
        )
        .await;
    world.settle(&first.id, AwaitingDeployment, &agent).await;
    // Every line, once: what the page holds is the raw log.
    let held = browser
        .run(
            "const v = window.kiln.viewers.get('backend'); const lines = []; for (let n = 0; n < v.total; n++) { const l = v.line(n); lines.push(l ? l[0] : null); } return lines.join('\\n') + '\\n'",
            vec![],
        )
        .await;
    let raw = world.log(&first.id, "backend").await;
    assert_eq!(
        held.as_str().unwrap(),
        raw,
        "the live viewer lost or doubled a line"
    );

    // Deploy, then redeploy: the browser follows to the new deployment.
    browser.click_to_load("button.deploy").await;
    world.admin.wait_for_status(&first.id, Live).await;
    browser.goto(&page).await;
    browser.click_to_load("button.redeploy").await;
    let second_path = browser
        .until(
            "the redeploy's page",
            Duration::from_secs(10),
            &format!("return !location.pathname.endsWith('{}') && location.pathname.startsWith('/deployments/') && location.pathname", first.id),
        )
        .await;
    let second_id = second_path
        .as_str()
        .unwrap()
        .trim_start_matches("/deployments/")
        .to_owned();
    let second = world.admin.deployment(&second_id).await;
    assert_eq!(second.redeploy_of.as_deref(), Some(first.id.as_str()));

    // The switcher in the header opens the environment's other deployments.
    browser.click("details.switcher summary").await;
    browser
        .find(&format!(
            "details.switcher a[href='/deployments/{}']",
            first.id
        ))
        .await
        .click()
        .await
        .unwrap();
    browser
        .until(
            "the first deployment again",
            Duration::from_secs(10),
            &format!("return location.pathname === '/deployments/{}'", first.id),
        )
        .await;
    let timeline = browser.text("ol.timeline").await;
    assert!(timeline.contains("Live"), "{timeline}");
    world.settle(&second_id, AwaitingDeployment, &agent).await;

    // A deployment rule: Production follows `release` from the next push on.
    browser
        .goto(&format!(
            "{site_url}/environments/{}/settings",
            world.environment_id
        ))
        .await;
    browser.fill("#branch", "release").await;
    // Issue 32: auto-deploy is on the page, off until ticked.
    let auto_deploy = browser.find("input[name=auto_deploy]").await;
    assert_eq!(
        auto_deploy.prop("checked").await.unwrap().as_deref(),
        Some("false")
    );
    auto_deploy.click().await.unwrap();
    browser
        .click_to_load("form.rules button[type=submit]")
        .await;
    let notice = browser.text(".notice").await;
    assert!(
        notice.contains("the next push to release builds here and deploys when the build succeeds"),
        "{notice}"
    );
    browser.screenshot("deployment-rules").await;
    let environment: Environment = world
        .admin
        .get(&format!("/api/v1/environments/{}", world.environment_id))
        .await
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(
        (environment.branch.as_str(), environment.auto_deploy),
        ("release", true)
    );
    let on_main = world
        .admin
        .push_repo(&world.repo.url, "main", &sha(77))
        .await;
    assert!(on_main.deployments.is_empty(), "main no longer deploys");
    let on_release = world
        .admin
        .push_repo(&world.repo.url, "release", &world.repo.head())
        .await;
    assert_eq!(on_release.deployments.len(), 1);
    browser
        .goto(&format!(
            "{site_url}/deployments/{}",
            on_release.deployments[0].id
        ))
        .await;
    browser.screenshot("deployment").await;
    // Auto-deploy: the build goes live with no click.
    world
        .settle(&on_release.deployments[0].id, Live, &agent)
        .await;
    browser.close().await;
}

#[tokio::test]
async fn issue_32_variables_are_pasted_read_from_a_file_exported_and_removed_in_the_browser() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let page = site.url(&format!("/environments/{}/variables", site.staging.id));
    let browser = signed_in(&site.cp.base_url(), "ada").await;
    browser.goto(&page).await;
    // The empty state leads to the form.
    assert!(
        browser.text("p.empty").await.contains("Paste a .env below"),
        "{}",
        browser.body_text().await
    );
    browser
        .fill(
            "#import-text",
            "DATABASE_URL='postgres://u:p@db/shop'\nJWT_SECRET=s3cr3t\n",
        )
        .await;
    browser
        .run(
            "document.querySelector('#import-secret').value = 'true'",
            vec![],
        )
        .await;
    browser
        .click_to_load("form.import button[type=submit]")
        .await;
    let notice = browser.text("p.notice").await;
    assert!(
        notice.contains("Saved 2 variable(s): DATABASE_URL, JWT_SECRET."),
        "{notice}"
    );
    for name in ["DATABASE_URL", "JWT_SECRET"] {
        let value = browser
            .text(&format!("tr[data-name={name}] td.value"))
            .await;
        assert_eq!(value, "secret · hidden");
    }
    let body = browser.body_text().await;
    assert!(
        !body.contains("s3cr3t") && !body.contains("postgres://"),
        "{body}"
    );

    // A .env file chosen in the form is read into the box.
    browser
        .run(
            "const files = new DataTransfer(); files.items.add(new File(['SHOP_NAME=Acme\\n'], 'shop.env')); \
             const input = document.querySelector('#import-file'); input.files = files.files; \
             input.dispatchEvent(new Event('change'))",
            vec![],
        )
        .await;
    browser
        .until(
            "the file fills the box",
            Duration::from_secs(10),
            "return document.querySelector('#import-text').value.includes('SHOP_NAME=Acme')",
        )
        .await;
    browser
        .click_to_load("form.import button[type=submit]")
        .await;
    assert_eq!(
        browser.text("tr[data-name=SHOP_NAME] td.value").await,
        "Acme"
    );

    // The export leaves the secrets empty, each with a comment.
    let exported = browser
        .run(
            "return fetch(document.querySelector('a.export').href).then((answer) => answer.text())",
            vec![],
        )
        .await;
    let exported = exported.as_str().unwrap_or_default().to_owned();
    assert!(
        exported.contains("# JWT_SECRET is secret: its value is not exported.\nJWT_SECRET=\n")
            && exported.contains("SHOP_NAME=Acme\n")
            && !exported.contains("s3cr3t"),
        "{exported}"
    );

    browser
        .click_to_load("tr[data-name=SHOP_NAME] button.remove")
        .await;
    assert_eq!(browser.text("p.notice").await, "Removed SHOP_NAME.");
    let listed = site
        .admin
        .get(&format!(
            "/api/v1/environments/{}/variables",
            site.staging.id
        ))
        .await
        .text();
    assert!(
        !listed.contains("SHOP_NAME") && listed.contains("JWT_SECRET"),
        "{listed}"
    );
    browser.screenshot("variables").await;
    browser.close().await;

    // A viewer reads the table and is shown why there is no form.
    let viewer = signed_in(&site.cp.base_url(), "vic").await;
    viewer.goto(&page).await;
    assert!(viewer.find_all("form.import").await.is_empty());
    assert!(viewer.find_all("button.remove").await.is_empty());
    assert!(
        viewer
            .body_text()
            .await
            .contains("Changing variables needs the admin role; you are a viewer."),
        "{}",
        viewer.body_text().await
    );
    viewer.close().await;
}

#[tokio::test]
async fn issue_32_an_environment_is_made_and_set_to_deploy_to_agents_in_the_browser() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let browser = signed_in(&site.cp.base_url(), "ada").await;
    browser
        .goto(&site.url(&format!("/projects/{}", site.project.id)))
        .await;
    browser.click_to_load("a.create").await;
    browser.fill("#name", "QA").await;
    browser.fill("#branch", "qa/*").await;
    browser
        .click_to_load("form.new-environment button[type=submit]")
        .await;
    let notice = browser.text("p.notice").await;
    assert!(notice.contains("Created QA"), "{notice}");
    let action = browser
        .find("form.deploy")
        .await
        .attr("action")
        .await
        .unwrap()
        .unwrap();
    let environment_id = action
        .trim_start_matches("/environments/")
        .trim_end_matches("/deploy-settings")
        .to_owned();

    // A hostname that would reach Caddy's config is refused, naming the field.
    browser
        .fill("#backend_hostname", "api.qa.shop.test\"}")
        .await;
    browser
        .click_to_load("form.deploy button[type=submit]")
        .await;
    let notice = browser.text("p.notice").await;
    assert!(
        notice.starts_with("Not saved") && notice.contains("backend_hostname"),
        "{notice}"
    );
    browser
        .run(
            "document.querySelector('#backend_hostname').value = ''",
            vec![],
        )
        .await;
    browser.fill("#backend_hostname", "api.qa.shop.test").await;
    browser.fill("#storefront_hostname", "qa.shop.test").await;
    browser.fill("#agent_labels", "edge, eu").await;
    browser
        .run(
            "document.querySelector('#releases_kept').value = '3'",
            vec![],
        )
        .await;
    browser
        .click_to_load("form.deploy button[type=submit]")
        .await;
    assert!(browser.text("p.notice").await.starts_with("Saved"));
    let environment: serde_json::Value = serde_json::from_str(
        &site
            .admin
            .get(&format!("/api/v1/environments/{environment_id}"))
            .await
            .text(),
    )
    .unwrap();
    assert_eq!(environment["branch"], "qa/*");
    assert_eq!(environment["auto_deploy"], true);
    assert_eq!(
        environment["deploy"],
        serde_json::json!({
            "agent_labels": ["edge", "eu"],
            "backend_hostname": "api.qa.shop.test",
            "storefront_hostname": "qa.shop.test",
            "worker": false,
            "health_path": "/health",
            "health_timeout_seconds": 120,
            "releases_kept": 3,
        })
    );
    browser.close().await;
}

#[tokio::test]
async fn issue_32_agents_are_paused_resumed_revoked_and_registered_from_the_browser() {
    if !browser_available() {
        return;
    }
    let site = site().await;
    let browser = signed_in(&site.cp.base_url(), "ada").await;
    browser.goto(&site.url("/agents")).await;
    // Issue 32: every column has its header (the host facts had none).
    let columns = browser
        .run(
            "const t = document.querySelector('table.agents'); return [t.querySelectorAll('thead th').length, t.querySelector('tbody tr').children.length]",
            vec![],
        )
        .await;
    assert_eq!(columns[0], columns[1], "{columns}");
    let agent_id = site
        .admin
        .get("/api/v1/agents")
        .await
        .text()
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let paused = || async {
        let text = site
            .admin
            .get(&format!("/api/v1/agents/{agent_id}"))
            .await
            .text();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["paused"] == true
    };
    browser.click_to_load("button.pause").await;
    assert!(browser
        .text("p.notice")
        .await
        .starts_with("Paused builder-1"));
    assert!(paused().await);
    browser.click_to_load("button.resume").await;
    assert!(browser
        .text("p.notice")
        .await
        .starts_with("Resumed builder-1"));
    assert!(!paused().await);

    // A registration token, shown once with the command to run; it registers an agent.
    browser.fill("#token-name", "build host 7").await;
    browser.fill("#token-labels", "linux").await;
    browser
        .click_to_load("form.registration-token button[type=submit]")
        .await;
    let command = browser.text("code.register").await;
    assert!(
        command.starts_with(&format!(
            "kiln-agent register --server {} --token ",
            site.cp.base_url()
        )) && command.ends_with(" --labels linux"),
        "{command}"
    );
    let token = command
        .split(" --token ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let registered = Api::new(site.cp.base_url(), None)
        .send_json(
            reqwest::Method::POST,
            "/api/v1/agents/register",
            &kiln_protocol::RegisterAgentRequest {
                registration_token: token,
                name: "host-7".into(),
                labels: vec!["linux".into()],
                facts: None,
            },
        )
        .await;
    assert_eq!(
        registered.status,
        StatusCode::CREATED,
        "{}",
        registered.text()
    );

    // Revoked, the agent's token stops working.
    browser.goto(&site.url("/agents")).await;
    browser
        .run(
            &format!(
                "document.querySelector('form[action=\"/agents/{agent_id}/revoke\"] input[name=for_good]').checked = true"
            ),
            vec![],
        )
        .await;
    browser
        .click_to_load(&format!(
            "form[action=\"/agents/{agent_id}/revoke\"] button.revoke"
        ))
        .await;
    assert!(browser.text("p.notice").await.starts_with("Revoked"));
    let refused = site
        .agent
        .post_json(
            "/api/v1/agent/jobs/claim",
            &kiln_protocol::ClaimRequest::default(),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refused.text()
    );
    browser.screenshot("agents").await;
    browser.close().await;
}
